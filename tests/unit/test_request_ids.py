"""Request ids: unique within a process and across processes forked from it."""

from __future__ import annotations

import multiprocessing

from currencyex.gateway.middleware import new_request_id


def _send_an_id(conn: multiprocessing.connection.Connection) -> None:
    conn.send(new_request_id())
    conn.close()


def test_ids_in_a_row_differ_and_look_like_a_uuids_hex() -> None:
    made = [new_request_id() for _ in range(1000)]
    assert len(set(made)) == len(made)
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in made)


def test_a_forked_child_draws_its_own_prefix() -> None:
    fork = multiprocessing.get_context("fork")
    received = []
    for _ in range(2):
        ours, theirs = fork.Pipe(duplex=False)
        child = fork.Process(target=_send_an_id, args=(theirs,))
        child.start()
        received.append(ours.recv())
        child.join(timeout=10)
        assert child.exitcode == 0
    parent = new_request_id()
    prefixes = {i[:16] for i in [*received, parent]}
    assert len(prefixes) == 3, "parent and each child have their own prefix"
