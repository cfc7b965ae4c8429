#!/usr/bin/python3
"""gen_bcrypt.py PASSWORD [--rounds N] [--ident 2b|2a|2y]

Prints a bcrypt hash of PASSWORD made by passlib (Debian python3-passlib), the kind of hash an
account imported from another system carries. auth-service must accept it at login and upgrade
it to Argon2id. Used by tests/unit/test_password.c and by black-box import tests.
"""
import argparse
import sys

from passlib.hash import bcrypt


def main() -> int:
    ap = argparse.ArgumentParser(description="bcrypt hash as passlib makes it")
    ap.add_argument("password")
    ap.add_argument("--rounds", type=int, default=12, help="log2 cost, 4..31 (default 12)")
    ap.add_argument("--ident", choices=["2a", "2b", "2y"], default="2b")
    args = ap.parse_args()
    print(bcrypt.using(rounds=args.rounds, ident=args.ident).hash(args.password))
    return 0


if __name__ == "__main__":
    sys.exit(main())
