#!/usr/bin/python3
"""totp_now.py B32SECRET [--at UNIX_SECONDS]
totp_now.py --uri OTPAUTH_URI [--at UNIX_SECONDS] [--label]

Prints the 6-digit TOTP code that pyotp (Debian python3-pyotp), standing in for an
authenticator app, computes for a base32 secret, or for a provisioning URI as an app would
scan it: now, or at the given time. With --label it prints the issuer and the account name
that the app would show, separated by a tab, instead of a code. Used by
tests/unit/test_totp.c and by black-box MFA tests.
"""
import argparse
import sys

import pyotp


def main() -> int:
    ap = argparse.ArgumentParser(description="TOTP code as pyotp computes it")
    ap.add_argument("secret", nargs="?", help="base32 secret")
    ap.add_argument("--uri", help="otpauth:// URI instead of a secret")
    ap.add_argument("--at", type=int, help="Unix time (default: now)")
    ap.add_argument("--label", action="store_true", help="print issuer<TAB>name of --uri")
    args = ap.parse_args()
    if (args.secret is None) == (args.uri is None):
        ap.error("give either a secret or --uri")
    totp = pyotp.parse_uri(args.uri) if args.uri else pyotp.TOTP(args.secret)
    if args.label:
        if not args.uri:
            ap.error("--label needs --uri")
        print(f"{totp.issuer}\t{totp.name}")
        return 0
    print(totp.now() if args.at is None else totp.at(args.at))
    return 0


if __name__ == "__main__":
    sys.exit(main())
