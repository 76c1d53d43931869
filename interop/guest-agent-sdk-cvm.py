"""Runs INSIDE a container of a Berth CVM whose compose file mounts the guest
agent the way Phala's examples do (/var/run/dstack.sock, and
/var/run/tappd.sock for the legacy client). Calls the official Python
dstack-sdk and prints ONE short JSON line prefixed `BERTH-PY-SDK ` (no
secret: the derived key is printed as its public key; the signature chain
is printed so the test recovers it itself).

Usage: python guest-agent-sdk-cvm.py [DSTACK_SOCKET [TAPPD_SOCKET]]
"""

import json
import sys
import warnings

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from dstack_sdk import DstackClient, TappdClient

warnings.simplefilter("ignore")


def rtmrs_in(quote_hex):
    q = bytes.fromhex(quote_hex)
    return [q[376 + 48 * i : 424 + 48 * i].hex() for i in range(4)]


def main():
    dstack_sock = sys.argv[1] if len(sys.argv) > 1 else "/var/run/dstack.sock"
    tappd_sock = sys.argv[2] if len(sys.argv) > 2 else "/var/run/tappd.sock"
    client = DstackClient(dstack_sock)
    out = {}
    info = client.info()
    out["info"] = {"app_id": info.app_id, "compose_hash": info.compose_hash}
    key = client.get_key("wallet/py", "signing")
    derived = ec.derive_private_key(int.from_bytes(key.decode_key(), "big"), ec.SECP256K1())
    out["get_key"] = {
        "derived_pubkey": derived.public_key()
        .public_bytes(Encoding.X962, PublicFormat.CompressedPoint)
        .hex(),
        "signature_chain": [s.hex() for s in key.decode_signature_chain()],
    }
    client.emit_event("py-sdk-event", "hello from python inside the CVM")
    quote = client.get_quote(b"berth-py-in-cvm")
    replayed = quote.replay_rtmrs()
    out["get_quote"] = {
        "replayed": [replayed[i] for i in range(4)],
        "rtmrs_in_quote": rtmrs_in(quote.quote),
        "report_data_in_quote": bytes.fromhex(quote.quote)[568:632].hex(),
    }
    tls = client.get_tls_key(subject="py.example", alt_names=["py.example"])
    out["get_tls_key"] = {"chain_len": len(tls.certificate_chain)}
    sig = client.sign("secp256k1", b"message from python")
    ver = client.verify("secp256k1", b"message from python", sig.decode_signature(), sig.decode_public_key())
    out["sign"] = {"chain_len": len(sig.signature_chain), "valid": ver.valid}
    tappd = TappdClient(tappd_sock)
    dk = tappd.derive_key("/legacy", "legacy.example")
    tq = tappd.tdx_quote(b"legacy report data", "sha512")
    tr = tq.replay_rtmrs()
    out["tappd"] = {
        "derive_chain_len": len(dk.certificate_chain),
        "replayed": [tr[i] for i in range(4)],
        "rtmrs_in_quote": rtmrs_in(tq.quote),
    }
    print("BERTH-PY-SDK " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
