"""Opens a sealed env with an independent implementation (pyca/cryptography).

Usage: .deps/venv/bin/python interop/open-with-python.py KEYFILE < sealed.hex
Prints the decrypted JSON exactly as it was inside the ciphertext.
"""
import sys

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

key = X25519PrivateKey.from_private_bytes(bytes.fromhex(open(sys.argv[1]).read().strip()))
data = bytes.fromhex(sys.stdin.read().strip())
shared = key.exchange(X25519PublicKey.from_public_bytes(data[:32]))
sys.stdout.buffer.write(AESGCM(shared).decrypt(data[32:44], data[44:], None))
