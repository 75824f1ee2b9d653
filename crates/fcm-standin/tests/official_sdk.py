"""Drives the official Firebase Admin SDK (PyPI firebase-admin) against the FCM stand-in.

argv: the stand-in's base URL and a service-account key file whose token_uri is the stand-in's.
The SDK signs its OAuth assertion for Google's token URL and asks for Google's scopes, as it
does in production; only the FCM host, fixed in the SDK, is pointed at the stand-in. Prints one
JSON line: what each call gave.
"""

import json
import sys

import firebase_admin
from firebase_admin import credentials, exceptions, messaging

standin, key_file = sys.argv[1], sys.argv[2]
messaging._MessagingService.FCM_URL = standin + "/v1/projects/{0}/messages:send"

app = firebase_admin.initialize_app(credentials.Certificate(key_file))


def outcome(call):
    try:
        return {"ok": call()}
    except exceptions.FirebaseError as e:
        return {"error": type(e).__name__, "code": e.code}


def message(token):
    return messaging.Message(
        token=token,
        notification=messaging.Notification(title="Coupure", body="Retour à 14 h"),
        data={"kind": "outage"},
        android=messaging.AndroidConfig(ttl=600, collapse_key="outage"),
    )


results = {
    "success": outcome(lambda: messaging.send(message("good-token"))),
    "unregistered": outcome(lambda: messaging.send(message("dead-token"))),
    "sender_id_mismatch": outcome(lambda: messaging.send(message("foreign-token"))),
    "invalid_argument": outcome(lambda: messaging.send(message("bad-payload-token"))),
    "quota_exceeded": outcome(lambda: messaging.send(message("busy-token"))),
    "third_party_auth": outcome(lambda: messaging.send(message("apns-token"))),
}
batch = messaging.send_each([message("good-token"), message("dead-token"), message("other-token")])
results["send_each"] = {
    "success_count": batch.success_count,
    "failure_count": batch.failure_count,
    "errors": [type(r.exception).__name__ if r.exception else None for r in batch.responses],
}
print(json.dumps(results))
