"""The rate service: live exchange rates, corridor pricing and short-lived quotes."""
