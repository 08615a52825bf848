#!/usr/bin/python3
# An independent DKIM implementation for tests/it/dkim_rfc6376.rs: dkimpy
# (Debian python3-dkim). Run with Debian's /usr/bin/python3.
#
#   dkimpy.py sign < JOBS
#       JOBS is a JSON list of {"message": base64, "key": PEM path,
#       "selector", "domain", "algorithm": "rsa-sha256" | "ed25519-sha256",
#       "canon": for example "relaxed/simple", "length": bool, "headers":
#       names for h= (a name listed once more than present is oversigned)}.
#       Writes a JSON list: for each job, the DKIM-Signature header dkimpy
#       makes (name, value, CRLF), base64.
#
#   dkimpy.py verify < JOB
#       JOB is {"records": {DNS name with trailing dot: TXT text},
#       "messages": [base64]}. Verifies each DKIM-Signature of each message,
#       top first; writes a JSON list of lists of "pass" or "fail". No DNS
#       query leaves the process.
#
# One process for many messages: starting Python and dkimpy costs more than
# signing.
#
# GPL-3.0-or-later, part of dispatch-milter's tests.

import base64
import json
import sys

import dkim


def private_key(path, algorithm):
    with open(path, "rb") as f:
        pem = f.read()
    if algorithm != b"ed25519-sha256":
        return pem
    # dkimpy takes the raw 32-byte Ed25519 seed in base64; a PKCS#8 file
    # (RFC 8410) ends with it.
    body = b"".join(
        line for line in pem.splitlines() if line and not line.startswith(b"-----")
    )
    return base64.b64encode(base64.b64decode(body)[-32:])


def sign():
    out = []
    for job in json.load(sys.stdin):
        algorithm = job["algorithm"].encode()
        d = dkim.DKIM(base64.b64decode(job["message"]), signature_algorithm=algorithm)
        header = d.sign(
            job["selector"].encode(),
            job["domain"].encode(),
            private_key(job["key"], algorithm),
            canonicalize=tuple(job["canon"].encode().split(b"/")),
            include_headers=[h.encode() for h in job["headers"]],
            length=job["length"],
        )
        out.append(base64.b64encode(header).decode())
    json.dump(out, sys.stdout)


def verify():
    job = json.load(sys.stdin)
    records = job["records"]

    def dnsfunc(name, timeout=5):
        text = records.get(name.decode())
        return text.encode() if text is not None else None

    out = []
    for message in job["messages"]:
        d = dkim.DKIM(base64.b64decode(message))
        count = sum(1 for name, _ in d.headers if name.lower() == b"dkim-signature")
        results = []
        for idx in range(count):
            try:
                ok = d.verify(idx=idx, dnsfunc=dnsfunc)
            except dkim.DKIMException:
                ok = False
            results.append("pass" if ok else "fail")
        out.append(results)
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    {"sign": sign, "verify": verify}[sys.argv[1]]()
