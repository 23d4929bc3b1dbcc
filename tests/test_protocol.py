"""Bad peers on the node's socket: garbage, wrong tokens and truncated frames are refused and the
node goes on serving its real workers."""

import socket
import struct

import pytest

import volley


@volley.remote
def one():
    return 1


def node_socket_name():
    """The node's abstract socket, as listed in /proc/net/unix (``@volley-<pid>-<nonce>``)."""
    import os

    prefix = f"@volley-{os.getpid()}-"
    with open("/proc/net/unix") as f:
        for line in f:
            path = line.split()[-1]
            if path.startswith(prefix):
                return "\0" + path[1:]
    raise AssertionError("the node's socket is not listed in /proc/net/unix")


def connect():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(node_socket_name())
    return s


@pytest.fixture
def node():
    volley.init(num_cpus=1)
    assert volley.get(one.remote()) == 1
    yield
    volley.shutdown()


def node_log() -> str:
    """The node's diagnostics (a driver writes them to a log file of its own, not to stderr)."""
    path = volley._core.diagnostics_file()
    return open(path).read() if path else ""


def closed_by_peer(s):
    try:
        return s.recv(1) == b""
    except (ConnectionResetError, TimeoutError):
        return True


@pytest.mark.parametrize(
    "payload",
    [
        b"\x00\x00\x00\x05garbage-after-a-short-frame",  # a frame that is not a hello
        b"\xff\xff\xff\xff",  # a length above the maximum frame size
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # another protocol altogether
        b"\x00\x00\x10\x00abc",  # truncated: promises 4 KiB, sends 3 bytes, then hangs up
    ],
)
def test_bad_frames_are_refused_and_the_node_keeps_serving(node, payload, capfd):
    logged = len(node_log())
    s = connect()
    s.sendall(payload)
    s.shutdown(socket.SHUT_WR)
    assert closed_by_peer(s)
    s.close()
    assert volley.get([one.remote() for _ in range(20)]) == [1] * 20
    assert "refused a connection" in node_log()[logged:]
    assert "refused a connection" not in capfd.readouterr().err


def test_a_wrong_session_token_is_refused(node, capfd):
    # A well-formed hello (postcard: version, worker id=1, pid, token string) with a bad token.
    version, worker, pid = volley._core.PROTOCOL_VERSION, 1, 12345
    token = b"0" * 32

    def varint(n):
        out = b""
        while True:
            b = n & 0x7F
            n >>= 7
            if n:
                out += bytes([b | 0x80])
            else:
                return out + bytes([b])

    body = varint(version) + varint(worker) + varint(pid) + varint(len(token)) + token
    logged = len(node_log())
    s = connect()
    s.sendall(struct.pack(">I", len(body)) + body)
    assert closed_by_peer(s)
    s.close()
    assert volley.get(one.remote()) == 1
    assert "wrong session token" in node_log()[logged:]
    assert "wrong session token" not in capfd.readouterr().err


def test_shutdown_leaves_no_socket_and_no_files():
    import os
    import tempfile

    before_tmp = set(os.listdir(tempfile.gettempdir()))
    before_shm = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    volley.init(num_cpus=1)
    assert volley.get(one.remote()) == 1
    assert node_socket_name()  # listening while running
    volley.shutdown()
    with open("/proc/net/unix") as f:
        assert f"@volley-{os.getpid()}-" not in f.read()
    # Only names that could be this process's: other programs may use /tmp meanwhile.
    mine = f"volley-{os.getpid()}"
    new_tmp = set(os.listdir(tempfile.gettempdir())) - before_tmp
    assert {n for n in new_tmp if mine in n} == set()
    if os.path.isdir("/dev/shm"):
        new_shm = set(os.listdir("/dev/shm")) - before_shm
        assert {n for n in new_shm if mine in n} == set()
