"""HTTP between the processes of a split deployment: where the services are, and calls to them."""
