#!/usr/bin/env python3
"""An NTLM acceptor (server side) for tests/ntlm.rs, built on pyspnego's pure-Python NTLM.

It checks serversync's NTLMv2 client with an implementation written by others: the
NTLMv2 response against the password, the MIC when the client flags one, and the channel
binding.

Usage: ntlm_acceptor.py [--cert DER_FILE]

With --cert, the acceptor requires the RFC 5929 tls-server-end-point channel binding of
that certificate, computed here with the `cryptography` package (the hash of the
certificate's signature, SHA-256 for MD5/SHA-1), independently of the Rust code. Without
it the acceptor has no bindings.

Credentials come from the file named by the environment variable NTLM_USER_FILE
(`DOMAIN:user:password` lines, `:user@domain:password` for a UPN).

Protocol, one base64 token per line on stdin:
  line 1: the NEGOTIATE message  -> prints the CHALLENGE message (base64), or ERR
  line 2: the AUTHENTICATE message -> prints `OK <principal>` or `ERR <ExceptionClass> <text>`
Then the program exits.
"""

import argparse
import base64
import sys

import spnego
from spnego.channel_bindings import GssChannelBindings
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes


def tls_server_end_point(der: bytes) -> bytes:
    cert = x509.load_der_x509_certificate(der)
    try:
        algorithm = cert.signature_hash_algorithm
    except UnsupportedAlgorithm:
        algorithm = None
    if algorithm is None or algorithm.name in ("md5", "sha1"):
        algorithm = hashes.SHA256()
    digest = hashes.Hash(algorithm)
    digest.update(der)
    return b"tls-server-end-point:" + digest.finalize()


def answer(line: str) -> None:
    print(line, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cert")
    args = parser.parse_args()

    bindings = None
    if args.cert:
        with open(args.cert, "rb") as f:
            bindings = GssChannelBindings(application_data=tls_server_end_point(f.read()))

    server = spnego.server(protocol="ntlm", channel_bindings=bindings)
    for step in ("negotiate", "authenticate"):
        line = sys.stdin.readline()
        if not line:
            answer("ERR EOF no %s message" % step)
            return 1
        try:
            out = server.step(base64.b64decode(line.strip()))
        except Exception as e:  # every failure is reported to the test
            answer("ERR %s %s" % (type(e).__name__, str(e).replace("\n", " ")))
            return 0
        if step == "negotiate":
            answer(base64.b64encode(out or b"").decode())
    if server.complete:
        answer("OK %s" % server.client_principal)
    else:
        answer("ERR Incomplete the context did not complete")
    return 0


if __name__ == "__main__":
    sys.exit(main())
