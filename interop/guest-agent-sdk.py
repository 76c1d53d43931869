"""Calls a guest agent with the official Python dstack-sdk (DstackClient on
dstack.sock, the legacy TappdClient on tappd.sock) and prints one JSON
object of what the SDK returned, for Berth's agent interop test.

Usage: python guest-agent-sdk.py DSTACK_SOCKET TAPPD_SOCKET
"""

import json
import sys
import warnings

from dstack_sdk import DstackClient, TappdClient

warnings.simplefilter("ignore")


def rtmrs_in(quote_hex):
    q = bytes.fromhex(quote_hex)
    return [q[376 + 48 * i : 424 + 48 * i].hex() for i in range(4)]


def main():
    dstack_sock, tappd_sock = sys.argv[1], sys.argv[2]
    client = DstackClient(dstack_sock)
    out = {}
    info = client.info()
    out["info"] = {
        "app_id": info.app_id,
        "compose_hash": info.compose_hash,
        "app_compose": info.tcb_info.app_compose,
        "events": [e.event for e in info.tcb_info.event_log],
    }
    key = client.get_key("wallet/eth", "signing")
    out["get_key"] = {
        "key": key.decode_key().hex(),
        "chain": [s.hex() for s in key.decode_signature_chain()],
    }
    client.emit_event("py-sdk-event", "hello from python")
    quote = client.get_quote(b"berth-py-test")
    replayed = quote.replay_rtmrs()
    out["get_quote"] = {
        "quote": quote.quote,
        "event_log": quote.event_log,
        "replay_matches": [replayed[i] for i in range(4)] == rtmrs_in(quote.quote),
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
        "quote": tq.quote,
        "replay_matches": [tr[i] for i in range(4)] == rtmrs_in(tq.quote),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
