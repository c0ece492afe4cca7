"""ZeroMQ CURVE for PhantomLink's sockets: the certificate directory, server and client set-up, and
the ``python -m protocol.curve keygen DIR`` command that makes the certificates.

A certificate directory (``PHANTOM_CURVE_DIR``) holds, as written by ``keygen``::

    server.key          the broker's public key       (every process needs it)
    server.key_secret   the broker's secret key       (the broker's host only)
    client.key          a client's public key
    client.key_secret   a client's secret key         (control, bridges, analysis scripts)
    authorized/         public keys the broker accepts (client.key; add more with `keygen --client NAME`)

With CURVE on, both broker sockets encrypt everything and accept only clients whose public key is
in ``authorized/`` (checked by pyzmq's ZAP authenticator, ``zmq.auth.thread.ThreadAuthenticator``).
Without ``PHANTOM_CURVE_DIR`` the sockets are plain TCP, as before. docs/security.md shows set-ups.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

SERVER = "server"
CLIENT = "client"
AUTHORIZED = "authorized"


class CurveError(ValueError):
    """The certificate directory lacks a file this process needs, or holds an unreadable one."""


@dataclass(frozen=True)
class ClientKeys:
    public: bytes
    secret: bytes
    server_public: bytes

    def apply(self, sock: zmq.Socket) -> None:
        """Make ``sock`` a CURVE client of the broker (call before connect)."""
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret
        sock.curve_serverkey = self.server_public


@dataclass(frozen=True)
class ServerKeys:
    public: bytes
    secret: bytes
    authorized: Path

    def apply(self, sock: zmq.Socket) -> None:
        """Make ``sock`` a CURVE server (call before bind)."""
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret
        sock.curve_server = True


def _load(path: Path, secret: bool) -> tuple[bytes, bytes | None]:
    if not path.is_file():
        raise CurveError(f"PHANTOM_CURVE_DIR: {path} is missing (make it with "
                         f"`python -m protocol.curve keygen {path.parent}`)")
    try:
        public, private = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise CurveError(f"PHANTOM_CURVE_DIR: cannot read {path}: {exc}") from None
    if secret and not private:
        raise CurveError(f"PHANTOM_CURVE_DIR: {path} holds no secret key")
    return public, private


def client_keys(curve_dir: Path | None) -> ClientKeys | None:
    """The keys a client process uses, or None when CURVE is off. CurveError if incomplete."""
    if curve_dir is None:
        return None
    public, secret = _load(curve_dir / f"{CLIENT}.key_secret", secret=True)
    server_public, _ = _load(curve_dir / f"{SERVER}.key", secret=False)
    return ClientKeys(public, secret, server_public)


def client_context(curve_dir: Path | None, ctx: zmq.Context | None = None) -> zmq.Context:
    """A zmq Context (new, or ``ctx``) whose every new socket is a CURVE client of the broker when
    ``curve_dir`` is set (pyzmq applies a context's socket options to each socket it creates).
    CurveError if the directory lacks the client's files."""
    ctx = zmq.Context() if ctx is None else ctx
    keys = client_keys(curve_dir)
    if keys is not None:
        ctx.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
        ctx.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)
        ctx.setsockopt(zmq.CURVE_SERVERKEY, keys.server_public)
    return ctx


def server_keys(curve_dir: Path | None) -> ServerKeys | None:
    """The broker's keys, or None when CURVE is off. CurveError if incomplete."""
    if curve_dir is None:
        return None
    public, secret = _load(curve_dir / f"{SERVER}.key_secret", secret=True)
    authorized = curve_dir / AUTHORIZED
    if not authorized.is_dir() or not any(authorized.glob("*.key")):
        raise CurveError(f"PHANTOM_CURVE_DIR: {authorized} holds no client public key (*.key)")
    return ServerKeys(public, secret, authorized)


def start_authenticator(ctx: zmq.Context, keys: ServerKeys) -> ThreadAuthenticator:
    """pyzmq's ZAP handler for ``ctx``: CURVE clients whose key is in ``authorized/`` only."""
    auth = ThreadAuthenticator(ctx)
    auth.start()
    auth.configure_curve(domain="*", location=str(keys.authorized))
    return auth


def keygen(directory: Path, client: str | None = None) -> list[Path]:
    """Write a new server and client key pair (or, with ``client``, one more client) into
    ``directory``; the client's public key is also put into ``authorized/``. Existing files are
    never overwritten. Returns the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / AUTHORIZED).mkdir(exist_ok=True)
    names = [client] if client else [SERVER, CLIENT]
    written = []
    for name in names:
        if (directory / f"{name}.key").exists() or (directory / f"{name}.key_secret").exists():
            raise CurveError(f"{directory / name}.key already exists; not overwriting it")
        public, secret = zmq.auth.create_certificates(str(directory), name)
        Path(secret).chmod(0o600)
        written += [Path(public), Path(secret)]
        if name != SERVER:
            shutil.copy(public, directory / AUTHORIZED / f"{name}.key")
            written.append(directory / AUTHORIZED / f"{name}.key")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m protocol.curve",
                                     description="Make CURVE certificates for PHANTOM_CURVE_DIR.")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("keygen", help="write server and client key pairs into DIR")
    gen.add_argument("directory", type=Path)
    gen.add_argument("--client", metavar="NAME",
                     help="add one more client key pair NAME (and authorize it) instead")
    args = parser.parse_args(argv)
    try:
        for path in keygen(args.directory, args.client):
            print(path)
    except CurveError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
