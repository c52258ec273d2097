"""The stall watchdog against a server that never answers: a socket that listens and says nothing.

The kernel completes the TCP handshake for a listening socket nobody accepts from, so libpq connects
and then waits for an answer that never comes -- what a hung PostgreSQL looks like from outside.
(The same against a real SIGSTOPped server: tests/integration/test_source_hung.py.)
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
from migsafe.dsn import Dsn
from migsafe.exceptions import EnvironmentFault, SourceStalled
from migsafe.watchdog import Watchdog


@pytest.fixture
def silent_port() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield int(listener.getsockname()[1])


def test_a_source_that_never_answers_is_stalled_once_the_timeout_passes_and_the_message_hides_the_password(
    silent_port: int,
) -> None:
    # Given: a source (with a password in its DSN) that accepts connections and never answers
    dsn = Dsn.parse(f"postgresql://app:s3cret@127.0.0.1:{silent_port}/prod")
    cancelled: list[bool] = []
    # When: a watchdog with a 1 s stall timeout watches it
    with Watchdog(dsn, 1.0, "the backup") as watch, watch.on_stall(lambda: cancelled.append(True)):
        began = time.monotonic()
        while watch.stalled is None and time.monotonic() - began < 20:
            time.sleep(0.05)
        waited = time.monotonic() - began
    # Then: it is stalled after the timeout (not before), the operation's cancel ran, and the error is
    # an environment fault (exit 3) in one line naming the source, without its password
    assert watch.stalled is not None and 1.0 <= waited < 10, waited
    assert cancelled == [True]
    with pytest.raises(SourceStalled) as raised:
        watch.check("backup X failed and was removed: ")
    message = str(raised.value)
    assert isinstance(raised.value, EnvironmentFault) and raised.value.exit_code == 3
    assert message.startswith(f"backup X failed and was removed: the source 127.0.0.1:{silent_port}/prod stalled "
                              "during the backup: nothing came from it"), message
    assert "s3cret" not in message and "\n" not in message


def test_bytes_from_the_source_keep_it_alive_even_when_its_heartbeat_never_answers(silent_port: int) -> None:
    # Given: a source whose heartbeat never answers, but whose stream keeps sending
    dsn = Dsn.parse(f"host=127.0.0.1 port={silent_port} dbname=prod")
    with Watchdog(dsn, 1.0, "the backup") as watch:
        # When: a byte arrives every 0.2 s for 3 s (three stall timeouts)
        for _ in range(15):
            watch.alive(1)
            time.sleep(0.2)
        # Then: a source that sends is not stalled
        assert watch.stalled is None


def test_a_callback_registered_after_the_stall_runs_at_once(silent_port: int) -> None:
    # Given: a watchdog that has already seen the source stall
    dsn = Dsn.parse(f"host=127.0.0.1 port={silent_port} dbname=prod")
    with Watchdog(dsn, 0.5, "the scratch copy") as watch:
        deadline = time.monotonic() + 20
        while watch.stalled is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert watch.stalled is not None
        # When: a child is started just then, and registered
        called: list[bool] = []
        with watch.on_stall(lambda: called.append(True)):
            # Then: it is stopped at once, not left to wait on the hung source
            assert called == [True]
