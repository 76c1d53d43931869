"""Writes crates/envseal/tests/vectors.json with pyca/cryptography, an
implementation independent of Berth's. Run once; the output is committed.
Run with .deps/venv/bin/python (scripts/deps.sh installs it there).

Each vector fixes the app key, the ephemeral key and the nonce, so the sealed
bytes are exact and Berth must reproduce them byte for byte.
"""
import json
import os
import sys

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat


def raw_pub(k):
    return k.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


cases = [
    [],
    [{"key": "A", "value": "1"}],
    [
        {"key": "DSTACK_DOCKER_USERNAME", "value": "alice"},
        {"key": "DSTACK_DOCKER_PASSWORD", "value": "p@ss=w\"o'rd \\ \n\t ünï €"},
        {"key": "EMPTY", "value": ""},
    ],
]
vectors = []
for i, env in enumerate(cases):
    app = bytes([0x10 + i] * 32)
    eph = bytes(range(i, i + 32))
    nonce = bytes([0xA0 + i] * 12)
    app_key = X25519PrivateKey.from_private_bytes(app)
    eph_key = X25519PrivateKey.from_private_bytes(eph)
    shared = eph_key.exchange(app_key.public_key())
    plain = json.dumps({"env": env}, separators=(",", ":"), ensure_ascii=False).encode()
    sealed = raw_pub(eph_key) + nonce + AESGCM(shared).encrypt(nonce, plain, None)
    vectors.append({
        "app_private_key": app.hex(),
        "app_public_key": raw_pub(app_key).hex(),
        "ephemeral_private_key": eph.hex(),
        "nonce": nonce.hex(),
        "env": env,
        "sealed": sealed.hex(),
    })
out = os.path.join(os.path.dirname(__file__), "..", "crates", "envseal", "tests", "vectors.json")
with open(out, "w") as f:
    json.dump(vectors, f, indent=2, ensure_ascii=False)
    f.write("\n")
print(f"wrote {len(vectors)} vectors to {os.path.normpath(out)}", file=sys.stderr)
