#!/usr/bin/env python3
"""Writes the fuzz targets' seed inputs (fuzz/corpus/<target>/) from tests/fixtures/ and
examples/, in the formats rio_parse::harness reads: webhooks as `query\\nheaders\\n\\nbody`,
send answers as `status\\n[Retry-After: v\\n]body`. Seeds are named by their SHA-1, so
running it again adds only new ones; scripts/fuzz.sh minimises the corpora after each run."""
import glob, hashlib, json, os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECRET = "fuzz-webhook-secret-0123456789abcdef"  # rio_parse::harness::WEBHOOK_SECRET
FORM = "content-type: application/x-www-form-urlencoded"
JSON = "content-type: application/json"
seeds = {}


def add(target, data):
    if isinstance(data, str):
        data = data.encode()
    seeds.setdefault(target, []).append(data)


def fixture(path):
    with open(os.path.join(ROOT, path), "rb") as f:
        return f.read().rstrip(b"\n")


def webhook(query, header, body):
    return f"{query}\n{header}\n\n".encode() + body


for path in sorted(glob.glob(os.path.join(ROOT, "tests/fixtures/clicksend/*"))):
    name = os.path.basename(path)
    body = fixture(path)
    if name.startswith("send_"):
        status = 400 if "invalid" in name else 200
        add("clicksend_send_response", f"{status}\n".encode() + body)
        add("generic_response", f"{status}\n".encode() + body)
        continue
    if name.endswith(".txt"):  # GET push: the fields are the query string
        req = webhook(f"secret={SECRET}&" + body.decode(), "", b"")
    elif name.endswith(".json"):
        req = webhook(f"secret={SECRET}", JSON, body)
    else:
        req = webhook(f"secret={SECRET}", FORM, body)
    add("clicksend_receipts" if name.startswith("receipt") else "clicksend_inbound", req)
    add("generic_webhook", req)

for path in sorted(glob.glob(os.path.join(ROOT, "tests/fixtures/http-vonage-sms/*"))):
    name = os.path.basename(path)
    body = fixture(path)
    if name.startswith("send_"):
        status = {"throttled": 429, "bad_credentials": 401, "internal": 500}
        code = next((v for k, v in status.items() if k in name), 200)
        extra = b"Retry-After: 2\n" if code == 429 else b""
        add("generic_response", f"{code}\n".encode() + extra + body)
    elif name.endswith(".query"):
        add("generic_webhook", webhook(f"secret={SECRET}&" + body.decode(), "", b""))
    else:
        add("generic_webhook", webhook(f"secret={SECRET}", FORM, body))

# The JSON gateway of the harness (HMAC-signed, timestamped); signatures are not valid, the
# fuzzer mutates the shape.
for body in [
    {"id": "m1", "from": "+61422222222", "text": "hi", "received_at": "2025-01-15T10:02:00Z",
     "profile": {"name": "Ann"}},
    {"id": "m2", "from": "61422222222", "media": {"url": "https://cdn.example.com/a.jpg",
     "type": "image/jpeg"}, "received_at": 1736900100},
    [{"message_id": "p1", "status": "delivered", "ts": 1736900100},
     {"message_id": "p2", "status": "undelivered", "error": {"message": "absent", "code": 27}}],
]:
    add("generic_webhook", webhook("", "x-timestamp: 1700000000\nx-signature: sha256=00ff\n"
                                   + JSON, json.dumps(body).encode()))

for msg in [
    {"type": "text", "text": "Hello ☺"},
    {"type": "attachment", "attachment": {"type": "image", "url": "https://x.example/a.png",
                                          "fileName": "a.png", "description": "pic"}},
    {"type": "location", "latitude": 3.139, "longitude": 101.6869, "address": "KL",
     "name": "Tower"},
    {"type": "quick_reply", "title": "Pick", "replies": ["Yes", "No"]},
]:
    add("message_body", json.dumps({"channelId": "CH1", "contactId": "+61422222222",
                                    "message": msg}))
add("message_body", '{"channelId": 123, "contactId": "user_1@x", "message": {"type":"text","text":""}}')

for v in ["120", "1.5", "0", "Wed, 21 Oct 2015 07:28:00 GMT", "Sunday, 06-Nov-94 08:49:37 GMT",
          "Sun Nov  6 08:49:37 1994", "1e20", "18446744073709551616"]:
    add("retry_after", v)

for t in ["https://api.example.com/sms?to={contact_id_digits}&text={text}&key={secret.token}",
          "{attachment_url}", "Bearer {secret.token}", "{now_s}", "{now_ms}", "{mid}:{status_url}",
          "{attachment_caption} {attachment_file_name} {attachment_type}", "{{literal}}"]:
    add("generic_template", t + "\nHello /?#&= ünï €\n")

for path in sorted(glob.glob(os.path.join(ROOT, "examples/*.toml"))):
    add("config_text", fixture(path))

# Twilio, Vonage, Telegram, Plivo: webhooks with their signature/secret headers (not valid
# signatures: the fuzzer mutates the shape) and send answers with the status they come with.
def answer_status(name, ok):
    digits = "".join(c for c in name.split("_")[1] if c.isdigit()) if "_" in name else ""
    if len(digits) == 3:
        return int(digits)
    twilio = {"20003": 401, "20429": 429, "20500": 500}
    if digits in twilio:
        return twilio[digits]
    if "unauthorized" in name:
        return 401
    return 400 if name.startswith("error") or "error" in name else ok


PROVIDERS = {
    "twilio": ("x-twilio-signature: AAAA\n", 201),
    "vonage": ("authorization: Bearer e30.e30.AAAA\n", 202),
    "telegram": (f"x-telegram-bot-api-secret-token: {SECRET}\n", 200),
    "plivo": ("x-plivo-signature-v3: AAAA\nx-plivo-signature-v3-nonce: 123\n", 202),
}
for provider, (sig, ok) in PROVIDERS.items():
    for path in sorted(glob.glob(os.path.join(ROOT, f"tests/fixtures/{provider}/*"))):
        name = os.path.basename(path)
        if "signatures" in name:
            continue
        body = fixture(path)
        if name.startswith(("send_", "error_", "get_file")):
            status = answer_status(name, ok)
            extra = b"Retry-After: 3\n" if status == 429 else b""
            add(f"{provider}_send_response", f"{status}\n".encode() + extra + body)
        else:
            ctype = JSON if name.endswith(".json") else FORM
            add(f"{provider}_webhook", webhook("", sig + ctype, body))

for target, items in seeds.items():
    d = os.path.join(ROOT, "fuzz/corpus", target)
    os.makedirs(d, exist_ok=True)
    for data in items:
        with open(os.path.join(d, hashlib.sha1(data).hexdigest()), "wb") as f:
            f.write(data)
    print(f"{target}: {len(items)} seeds")
