"""dn2-sign: sign a bundle with an Ed25519 key, make a key pair, or check a signature.

    dn2-sign BUNDLE --key PRIVATE.pem          write BUNDLE/dn2.sig
    dn2-sign --keygen PRIVATE.pem              write PRIVATE.pem (0600) and PRIVATE.pem.pub
    dn2-sign BUNDLE --verify PUBLIC.pem        check BUNDLE against the public key

Boxes that load only signed bundles get the public key: ``--trusted-key PUBLIC.pem`` on
dn2-score / dn2-watch, ``Detector.load(..., trusted_key=...)``, or ``DN2_TRUSTED_KEY``.

Exit codes:
  0  signed / key pair written / signature valid
  2  usage error, a bundle that does not load or whose signature does not hold, a bad key,
     or cryptography missing (pip install 'dn2[sign]')
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from .cliargs import EXIT_OK, EXIT_USAGE, new_parser, report_error, start
from .errors import Dn2Error


def build_parser() -> argparse.ArgumentParser:
    p = new_parser(
        "sign",
        "Sign dn2 bundles (Ed25519) and make keys.",
        extra_epilog="exit 2 here: usage error, bad bundle, bad key or invalid signature",
    )
    p.add_argument("bundle", nargs="?", help="bundle directory written by dn2-fit")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--key", metavar="PRIVATE", help="sign BUNDLE with this private key (PEM)")
    g.add_argument(
        "--keygen",
        metavar="PRIVATE",
        help="write a new key pair: PRIVATE (mode 0600) and PRIVATE.pub",
    )
    g.add_argument(
        "--verify", metavar="PUBLIC", help="check BUNDLE's signature against this public key (PEM)"
    )
    return p


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    a = start(parser, argv, "sign")
    if isinstance(a, int):
        return a
    from . import signing

    try:
        if a.keygen:
            if a.bundle:
                raise Dn2Error("--keygen takes no BUNDLE")
            priv, pub = signing.generate_keypair(a.keygen)
            print(
                f"private key: {priv} (keep it off the boxes)\npublic key: {pub} "
                f"(key id {signing.key_id(signing.load_public_key(pub))}; give it to the "
                f"boxes as --trusted-key or DN2_TRUSTED_KEY)"
            )
            return EXIT_OK
        if not a.bundle:
            raise Dn2Error("expected a BUNDLE to sign or verify, found none")
        if a.key:
            print(signing.sign_bundle(a.bundle, a.key))
        else:
            sig = signing.verify_bundle(a.bundle, a.verify)
            print(
                f"{a.bundle}: signature valid (key {sig['key_id']}, "
                f"{len(sig['files'])} files and the manifest)"
            )
    except Dn2Error as exc:
        report_error("sign", exc, parser)
        return EXIT_USAGE
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
