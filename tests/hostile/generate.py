#!/usr/bin/env python3
"""Writes the hostile-input corpus of tests/hostile.rs: one `.case` file per
request, in a folder per category. Run from the repository root:

    python3 tests/hostile/generate.py

The files are committed; this script is how most of them were written and
how to add a family of cases. Each file is self-describing (see README.md
in this folder); cases can also be written by hand.
"""

import json
import os
import shutil
import urllib.parse

ROOT = os.path.dirname(os.path.abspath(__file__))
EXAMPLES = os.path.join(ROOT, "..", "..", "examples", "payloads")

# The tokens tests/hostile.rs starts serve with (tests/common serve_env).
SC = "sc-token"
SM = "sm-token"
WF = "wf-token"

cases = {}


def case(category, name, description, request, body=b"", headers=(), expect="202 accepted",
         sign=None, send=None, chunked=None, nest=None, fill=None, pad_to=None,
         reason=None, expect_header=None, expect_field=None, binary=False):
    lines = ["# " + d for d in description.strip().splitlines()]
    lines.append("request: " + request)
    for h in headers:
        lines.append("header: " + h)
    for key, value in (("sign", sign), ("send", send), ("chunked", chunked), ("nest", nest),
                       ("fill", fill), ("pad-to", pad_to)):
        if value is not None:
            lines.append(f"{key}: {value}")
    lines.append("expect: " + expect)
    if reason:
        lines.append("reason: " + reason)
    if expect_header:
        lines.append("expect-header: " + expect_header)
    if expect_field:
        lines.append("expect-field: " + expect_field)
    if isinstance(body, str):
        body = body.encode()
    text = "\n".join(lines) + "\n"
    if binary:
        import base64
        text += "body-base64: " + base64.b64encode(body).decode() + "\n"
        data = text.encode()
    else:
        data = text.encode() + b"body:\n" + body + b"\n"
    key = f"{category}/{name}.case"
    assert key not in cases, key
    cases[key] = data


def example(source, name):
    with open(os.path.join(EXAMPLES, source, name), "rb") as f:
        return f.read()


JSON = "content-type: application/json"
FORM = "content-type: application/x-www-form-urlencoded"
SC_URL = f"POST /webhooks/stickycards?token={SC}"


def sc_body(**extra):
    """A Sticky Cards event whose de-duplication key is unique to the case."""
    doc = {
        "event_type": "CustomerCreatedEvent",
        "timestamp": "2025-03-03T14:02:11Z",
        "customer_id": "cus_@UNIQ@",
        "card_id": "card_@UNIQ@",
        "email": "hostile@example.com",
        "first_name": "Hostile",
    }
    doc.update(extra)
    return json.dumps(doc)


# --- malformed and truncated JSON -------------------------------------------------
valid = sc_body()
for i, cut in enumerate(sorted(set([1, 2, 5, 10, 17, 30, 44, 60, 75, 90, 110, 130, 150,
                                     len(valid) - 30, len(valid) - 10, len(valid) - 2,
                                     len(valid) - 1]))):
    case("json", f"truncated-{cut:03}", f"A valid Sticky Cards body cut after {cut} bytes.",
         SC_URL, valid[:cut], [JSON], expect="400 malformed", reason="malformed JSON",
         expect_field="body")

for name, body, reason in [
    ("empty", "", "EOF"),
    ("whitespace-only", "   \n\t  ", "EOF"),
    ("lone-brace", "{", "EOF"),
    ("closing-brace", "}", "expected value"),
    ("trailing-comma", '{"event_type":"CustomerCreatedEvent",}', "trailing comma"),
    ("missing-value", '{"event_type":}', "expected value"),
    ("unquoted-key", '{event_type:"CustomerCreatedEvent"}', "key must be a string"),
    ("single-quotes-strict", "{'event_type':'CustomerCreatedEvent'}", "key must be a string"),
    ("nan", '{"event_type":"CustomerCreatedEvent","n":NaN}', "expected value"),
    ("infinity", '{"event_type":"CustomerCreatedEvent","n":Infinity}', "expected value"),
    ("comment", '{"event_type":"CustomerCreatedEvent" /* hi */}', "expected"),
    ("two-documents", valid + valid, "trailing characters"),
    ("trailing-garbage", valid + "x", "trailing characters"),
    ("bom", "\ufeff" + valid, "expected value"),
    ("nul-byte", '{"event_type":"Customer\u0000CreatedEvent"}', "control character"),
    ("raw-newline-in-string", '{"event_type":"Customer\nCreatedEvent"}', "control character"),
    ("bad-escape", '{"event_type":"\\q"}', "invalid escape"),
    ("lone-surrogate", '{"event_type":"\\ud800"}', "escape"),
    ("truncated-escape", '{"event_type":"\\u12', "EOF"),
    ("leading-zero", '{"event_type":"CustomerCreatedEvent","n":0123}', "invalid number"),
    ("plus-number", '{"event_type":"CustomerCreatedEvent","n":+1}', "expected value"),
    ("hex-number", '{"event_type":"CustomerCreatedEvent","n":0x10}', "expected"),
    ("xml", "<event><type>CustomerCreatedEvent</type></event>", "expected value"),
    ("form-on-json-source", "event_type=CustomerCreatedEvent", "expected value"),
    ("unclosed-string", '{"event_type":"CustomerCreatedEvent', "EOF"),
    ("unclosed-array", '{"segments":[1,2', "EOF"),
    ("true-prefix", "tru", "EOF"),
]:
    case("json", name, f"Malformed JSON: {name.replace('-', ' ')}.", SC_URL, body, [JSON],
         expect="400 malformed", reason=reason, expect_field="body")

for name, body in [("array", "[]"), ("string", '"CustomerCreatedEvent"'), ("number", "42"),
                   ("null", "null"), ("true", "true"), ("empty-object", "{}"),
                   ("array-of-events", "[" + valid + "]"),
                   ("type-null", '{"event_type":null,"customer_id":"c@UNIQ@"}'),
                   ("type-in-wrong-case", '{"Event_Type":"CustomerCreatedEvent"}'),
                   ("type-nested", '{"data":{"event_type":"CustomerCreatedEvent"}}')]:
    case("json", f"no-event-type-{name}",
         f"Well-formed JSON without an event type where the source looks ({name}).",
         SC_URL, body, [JSON], expect="400 no_event_type", expect_field="$.event_type")

# --- deep nesting -------------------------------------------------------------------
for n, open_, close in [(10000, "[", "]"), (10000, '{"a":', "}"), (129, "[", "]"),
                        (100000, "[", "]")]:
    kind = "arrays" if open_ == "[" else "objects"
    case("nesting", f"{kind}-{n}",
         f"{n} levels of nested {kind}, generated (nest:); serde_json's recursion limit is 128.",
         SC_URL, "@NEST@", [JSON], nest=f"{n} {open_} {close}", expect="400 malformed",
         reason="recursion limit")
case("nesting", "inside-event-10000",
     "A valid event carrying 10,000 levels of arrays in one field.",
     SC_URL, sc_body(deep="@MARK@").replace('"@MARK@"', "@NEST@"), [JSON],
     nest="10000 [ ]", expect="400 malformed", reason="recursion limit")
case("nesting", "inside-event-100",
     "A valid event carrying 100 levels of arrays: under the limit, stored.",
     SC_URL, sc_body(deep="@MARK@").replace('"@MARK@"', "@NEST@"), [JSON],
     nest="100 [ ]", expect="202 accepted")
case("nesting", "lenient-10000",
     "10,000 levels on SignalMind, whose lenient parser rewrites quotes first.",
     f"POST /webhooks/signalmind?token={SM}", "@NEST@", [JSON], nest="10000 [ ]",
     expect="400 malformed", reason="recursion limit")
case("nesting", "form-data-10000",
     "10,000 levels inside SlickText's signed `data` field.",
     "POST /webhooks/slicktext", "data=@NEST@", [FORM], nest="10000 %5B %5D",
     sign="slicktext", expect="400 malformed", reason="recursion limit")

# --- huge numbers and strings ------------------------------------------------------
for name, value, expect, reason in [
    ("int-400-digits", "1" + "0" * 400, "400 malformed", "number out of range"),
    ("exp-1e400", "1e400", "400 malformed", "number out of range"),
    ("neg-exp-1e-400", "1e-400", "202 accepted", None),
    ("u64-max-plus-one", "18446744073709551616", "202 accepted", None),
    ("i64-min-minus-one", "-9223372036854775809", "202 accepted", None),
    ("int-300-digits", "9" * 300, "202 accepted", None),
    ("float-long-mantissa", "0." + "1" * 5000, "202 accepted", None),
]:
    case("numbers", name, f"A huge number in a field ({name}).", SC_URL,
         sc_body(referral_count="@MARK@").replace('"@MARK@"', value), [JSON],
         expect=expect, reason=reason)
case("numbers", "customer-id-huge-number",
     "The customer id (the ordering key) is a 300-digit number.", SC_URL,
     sc_body(customer_id="@MARK@").replace('"@MARK@"', "9" * 300), [JSON])
case("numbers", "event-type-number",
     "The event type is a number: no mapping, stored as unmapped.", SC_URL,
     '{"event_type":42,"customer_id":"c@UNIQ@","timestamp":"2025-03-03T14:02:11Z"}', [JSON],
     expect="202 unmapped")
for name, count, expect in [("900k", 900000, "202 accepted"), ("1m", 1100000, "413 too_large")]:
    case("strings", f"long-name-{name}", f"A first name of {count} characters.", SC_URL,
         sc_body(first_name="@FILL@"), [JSON], fill=f"{count} x", expect=expect)
case("strings", "long-event-type", "An event type of 100,000 characters: unmapped.", SC_URL,
     '{"event_type":"@FILL@","customer_id":"c@UNIQ@"}', [JSON], fill="100000 E",
     expect="202 unmapped")
case("strings", "long-customer-id", "A customer id of 200,000 characters.", SC_URL,
     sc_body(customer_id="@FILL@"), [JSON], fill="200000 9")
case("strings", "many-escapes", "A name of 100,000 \\u escapes.", SC_URL,
     sc_body(first_name="@FILL@"), [JSON], fill="100000 \\u00e9")
case("strings", "many-keys", "50,000 distinct keys in one object.", SC_URL,
     sc_body(extra="@MARK@").replace('"@MARK@"', "{@FILL@\"z\":0}"), [JSON],
     fill='50000 "k":1,', expect="202 accepted")
case("strings", "unicode-everywhere", "Names in scripts, emoji and RTL marks.", SC_URL,
     sc_body(first_name="Zoë 李 \u202e🎉", last_name="\u0000".replace("\u0000", "é"))
     .encode("utf-8").decode("utf-8"), [JSON])

# --- invalid UTF-8 ------------------------------------------------------------------
for name, raw in [("lone-continuation", b"\x80"), ("overlong-slash", b"\xc0\xaf"),
                  ("truncated-sequence", b"\xe2\x82"), ("surrogate-bytes", b"\xed\xa0\x80"),
                  ("ff-byte", b"\xff"), ("latin1-name", b"Jos\xe9")]:
    body = sc_body(first_name="@X@").encode().replace(b"@X@", raw)
    case("utf8", f"json-{name}", f"Invalid UTF-8 inside a JSON string ({name}).", SC_URL, body,
         [JSON], expect="400 malformed", reason="malformed JSON", binary=True)
case("utf8", "json-outside-string", "Invalid UTF-8 between JSON tokens.", SC_URL,
     b'{"event_type":\xff"CustomerCreatedEvent"}', [JSON], expect="400 malformed", binary=True)
case("utf8", "form-raw-bytes",
     "A SlickText form body that is not UTF-8: its signed field cannot be read (401 first).",
     "POST /webhooks/slicktext", b"data=\xff\xfe", [FORM], sign="slicktext",
     expect="401 signature", reason="data", binary=True)
case("utf8", "form-percent-encoded-invalid",
     "A `data` field whose percent-decoding is not UTF-8 (%FF): no such field.",
     "POST /webhooks/slicktext", "data=%FF%FE", [FORM], sign="slicktext",
     expect="401 signature", reason="data")
case("utf8", "signature-header-not-ascii",
     "A token header with bytes over 0x7F counts as absent, the query has none: refused.",
     "POST /webhooks/stickycards", sc_body().encode(), [JSON, "x-webhook-token: sc-t\xe9ken"],
     expect="401 signature", expect_header="x-webhook-token")

# --- duplicate keys ----------------------------------------------------------------
case("dupkeys", "event-type-twice-last-wins",
     "Two event_type keys: the last one is read (serde_json), here a known event.", SC_URL,
     '{"event_type":"Nope","customer_id":"c@UNIQ@","card_id":"k@UNIQ@","event_type":"CustomerCreatedEvent"}',
     [JSON])
case("dupkeys", "event-type-twice-last-unknown",
     "Two event_type keys, the last unknown: stored as unmapped.", SC_URL,
     '{"event_type":"CustomerCreatedEvent","customer_id":"c@UNIQ@","event_type":"Nope"}', [JSON],
     expect="202 unmapped")
case("dupkeys", "customer-id-twice", "Two customer ids: the last orders delivery.", SC_URL,
     sc_body().replace('"customer_id"', '"customer_id":"first@UNIQ@","customer_id"', 1), [JSON])
case("dupkeys", "ghl-timestamp-twice",
     "A signed GHL body with an old timestamp hidden by a later fresh one: the verifier\n"
     "reads the same (last) value the engine reads, so it is fresh and accepted.",
     "POST /webhooks/ghl",
     '{"type":"ContactUpdate","locationId":"@LOCATION@","id":"c@UNIQ@","timestamp":"2020-01-01T00:00:00Z",'
     '"webhookId":"w@UNIQ@","timestamp":"@NOW_ISO@"}', [JSON], sign="ghl")
case("dupkeys", "ghl-timestamp-twice-old-last",
     "A signed GHL body whose last timestamp is three hours old: a replay, refused.",
     "POST /webhooks/ghl",
     '{"type":"ContactUpdate","locationId":"@LOCATION@","id":"c@UNIQ@","timestamp":"@NOW_ISO@",'
     '"webhookId":"w@UNIQ@","timestamp":"@OLD_ISO@"}', [JSON], sign="ghl",
     expect="401 signature", reason="old")

# --- content types ------------------------------------------------------------------
for ct, expect in [("application/xml", "415 content_type"), ("text/html", "415 content_type"),
                   ("multipart/form-data; boundary=x", "415 content_type"),
                   ("application/x-www-form-urlencoded", "415 content_type"),
                   ("application/octet-stream", "415 content_type"),
                   ("image/png", "415 content_type"), ("json", "415 content_type"),
                   ("application/jsonx", "415 content_type"),
                   ("", "415 content_type"),
                   ("application/json", "202 accepted"), ("APPLICATION/JSON", "202 accepted"),
                   ("application/json; charset=utf-8", "202 accepted"),
                   ("application/json;charset=UTF-16", "202 accepted"),
                   ("  application/json  ", "202 accepted"),
                   ("application/problem+json", "202 accepted"),
                   ("text/plain", "202 accepted"), ("text/plain; charset=us-ascii", "202 accepted")]:
    slug = "".join(c if c.isalnum() else "-" for c in ct.strip().lower()).strip("-") or "empty"
    if ct != ct.strip():
        slug = "padded-" + slug
    if ct != ct.lower():
        slug = "upper-" + slug
    case("content-type", f"stickycards-{slug}",
         f"Sticky Cards (a JSON source) posted as `{ct}`.", SC_URL, sc_body(),
         [f"content-type: {ct}"], expect=expect,
         expect_header="content-type" if expect.startswith("415") else None)
case("content-type", "stickycards-missing", "No Content-Type at all: read as the source says.",
     SC_URL, sc_body())
case("content-type", "stickycards-twice",
     "Two Content-Type headers, XML first: the first is the one checked.", SC_URL, sc_body(),
     ["content-type: application/xml", JSON], expect="415 content_type")
for ct, expect in [("application/x-www-form-urlencoded", "202 accepted"),
                   ("application/x-www-form-urlencoded; charset=UTF-8", "202 accepted"),
                   ("application/json", "202 accepted"), ("text/plain", "415 content_type"),
                   ("multipart/form-data; boundary=x", "415 content_type"),
                   ("application/xml", "415 content_type")]:
    slug = "".join(c if c.isalnum() else "-" for c in ct.lower()).strip("-")
    data = json.dumps({"Event": "LoyaltyEventCreated", "Timestamp": "2019-07-12 07:59:21",
                       "LoyaltyEvent": {"LoyaltyEventId": "ct-@UNIQ@", "Type": "credit",
                                        "Amount": "1"},
                       "LoyaltyMember": {"LoyaltyMemberId": "m@UNIQ@", "Balance": 3}})
    case("content-type", f"slicktext-{slug}", f"SlickText (a form source) posted as `{ct}`.",
         "POST /webhooks/slicktext", "data=" + urllib.parse.quote_plus(data),
         [f"content-type: {ct}"], sign="slicktext", expect=expect)
case("content-type", "order-415-before-401",
     "A wrong content type and no token: the content type is answered first.",
     "POST /webhooks/stickycards", sc_body(), ["content-type: application/xml"],
     expect="415 content_type")
case("content-type", "order-401-before-400",
     "Malformed JSON and no token: the signature is answered first.",
     "POST /webhooks/stickycards", "{", [JSON], expect="401 signature")

# --- body limits (1 MiB for every shipped source) ---------------------------------------
MiB = 1048576
for name, size, expect in [("at-limit", MiB, "202 accepted"),
                           ("one-over", MiB + 1, "413 too_large"),
                           ("two-over", MiB + 2, "413 too_large"),
                           ("double", 2 * MiB, "413 too_large")]:
    case("limits", f"stickycards-{name}", f"A valid body padded with spaces to {size} bytes.",
         SC_URL, sc_body(), [JSON], pad_to=size, expect=expect,
         expect_field="body" if expect.startswith("413") else None)
    case("limits", f"stickycards-{name}-no-token",
         f"{size} bytes and no token: the size is answered first.",
         "POST /webhooks/stickycards", sc_body(), [JSON], pad_to=size,
         expect=expect if expect.startswith("413") else "401 signature")
    case("limits", f"ghl-workflow-{name}", f"A workflow webhook padded to {size} bytes.",
         "POST /webhooks/ghl-workflow",
         '{"contact_id":"c@UNIQ@","customData":{"event":"Nope"}}', [JSON, f"x-webhook-token: {WF}"],
         pad_to=size, expect=expect if expect.startswith("413") else "202 unmapped")
    case("limits", f"slicktext-form-{name}", f"A signed SlickText form padded to {size} bytes.",
         "POST /webhooks/slicktext",
         "data=" + urllib.parse.quote_plus(json.dumps(
             {"Event": "LoyaltyEventCreated", "LoyaltyEvent": {"LoyaltyEventId": "l@UNIQ@"},
              "LoyaltyMember": {"LoyaltyMemberId": "m@UNIQ@"}})) + "&pad=", [FORM],
         sign="slicktext", pad_to=size, expect=expect)
case("limits", "content-length-lies-short",
     "Content-Length says 10 for a longer body: the rest is a second, broken request.",
     SC_URL, sc_body(), [JSON, "content-length: 10"], expect="400 malformed")

# --- chunked bodies (raw TCP) ---------------------------------------------------------
for size in [1, 7, 64, 4096]:
    case("chunked", f"valid-chunks-of-{size}", f"A valid event sent chunked, {size} bytes a chunk.",
         SC_URL, sc_body(), [JSON], chunked=size)
case("chunked", "malformed-json", "Broken JSON sent chunked.", SC_URL, '{"event_type":', [JSON],
     chunked=5, expect="400 malformed")
case("chunked", "over-limit", "2 MiB sent chunked (no Content-Length to refuse early).", SC_URL,
     sc_body(), [JSON], chunked=65536, pad_to=2 * MiB, expect="413 too_large")
case("chunked", "at-limit", "Exactly 1 MiB sent chunked.", SC_URL, sc_body(), [JSON],
     chunked=65536, pad_to=MiB)
case("chunked", "no-token", "Chunked without a token.", "POST /webhooks/stickycards", sc_body(),
     [JSON], chunked=16, expect="401 signature")
case("chunked", "slicktext-signed", "A signed SlickText form sent chunked.",
     "POST /webhooks/slicktext",
     "data=" + urllib.parse.quote_plus(json.dumps(
         {"Event": "LoyaltyEventCreated", "LoyaltyEvent": {"LoyaltyEventId": "ch@UNIQ@"},
          "LoyaltyMember": {"LoyaltyMemberId": "m@UNIQ@"}})), [FORM], sign="slicktext",
     chunked=10)
case("chunked", "bad-chunk-size",
     "A chunk size that is not hex: the framing is broken, the connection answered 400.",
     SC_URL, sc_body(), [JSON], chunked="bad", expect="400")

# --- signatures: Sticky Cards token (query or X-Webhook-Token) ------------------------------
for name, path, headers, expect, header in [
    ("missing", "/webhooks/stickycards", [], "401 signature", "x-webhook-token"),
    ("wrong-query", "/webhooks/stickycards?token=nope", [], "401 signature", "token"),
    ("wrong-header", "/webhooks/stickycards", ["x-webhook-token: nope"], "401 signature",
     "x-webhook-token"),
    ("empty-query", "/webhooks/stickycards?token=", [], "401 signature", "token"),
    ("empty-header", "/webhooks/stickycards", ["x-webhook-token: "], "401 signature",
     "x-webhook-token"),
    ("case-changed", "/webhooks/stickycards?token=SC-TOKEN", [], "401 signature", "token"),
    ("prefix-only", "/webhooks/stickycards?token=sc-", [], "401 signature", "token"),
    ("longer", "/webhooks/stickycards?token=sc-token-x", [], "401 signature", "token"),
    ("base64-encoded", "/webhooks/stickycards?token=c2MtdG9rZW4=", [], "401 signature", "token"),
    ("percent-encoded", "/webhooks/stickycards?token=%73%63%2D%74%6F%6B%65%6E", [],
     "202 accepted", None),
    ("plus-is-space", "/webhooks/stickycards?token=sc-token+", [], "401 signature", "token"),
    ("param-name-case", "/webhooks/stickycards?Token=sc-token", [], "401 signature",
     "x-webhook-token"),
    ("first-param-wins", "/webhooks/stickycards?token=sc-token&token=nope", [], "202 accepted",
     None),
    ("first-param-wrong", "/webhooks/stickycards?token=nope&token=sc-token", [], "401 signature",
     "token"),
    ("header-wins-over-query", "/webhooks/stickycards?token=nope", [f"x-webhook-token: {SC}"],
     "202 accepted", None),
    ("wrong-header-right-query", f"/webhooks/stickycards?token={SC}", ["x-webhook-token: nope"],
     "401 signature", "x-webhook-token"),
    ("header-padded", "/webhooks/stickycards", [f"x-webhook-token:    {SC}   "], "202 accepted",
     None),
    ("other-source-token", f"/webhooks/stickycards?token={SM}", [], "401 signature", "token"),
    ("token-in-fragment", "/webhooks/stickycards#token=sc-token", [], "401 signature",
     "x-webhook-token"),
    ("bearer-header", "/webhooks/stickycards", [f"authorization: Bearer {SC}"], "401 signature",
     "x-webhook-token"),
]:
    case("signature-stickycards", name, f"Sticky Cards token: {name.replace('-', ' ')}.",
         "POST " + path, sc_body(), [JSON] + headers, expect=expect, expect_header=header)
case("signature-stickycards", "replayed",
     "The same tokened delivery twice: stored once, the second answered duplicate.",
     SC_URL, sc_body(), [JSON], send=2, expect="200 duplicate")
case("signature-stickycards", "replayed-reformatted",
     "The same event re-serialised (other whitespace and key order): the declared\n"
     "de-duplication key (customer, card, time) still finds it.",
     SC_URL, sc_body(), [JSON], send="2 reformat", expect="200 duplicate")

# --- signatures: SignalMind and GHL workflow tokens ----------------------------------------
sm_body = json.dumps({"FirstName": "Marta", "Email": "m@UNIQ@@example.com",
                      "EventTypeCode": "S", "LoyaltyProgramId": 1})
for name, path, headers, expect in [
    ("missing", "/webhooks/signalmind", [], "401 signature"),
    ("wrong", "/webhooks/signalmind?token=nope", [], "401 signature"),
    ("stickycards-token", f"/webhooks/signalmind?token={SC}", [], "401 signature"),
    ("right-query", f"/webhooks/signalmind?token={SM}", [], "202 accepted"),
    ("right-header", "/webhooks/signalmind", [f"x-webhook-token: {SM}"], "202 accepted"),
]:
    case("signature-signalmind", name, f"SignalMind token: {name.replace('-', ' ')}.",
         "POST " + path, sm_body, [JSON] + headers, expect=expect)
case("signature-signalmind", "single-quotes", "SignalMind's single-quoted sample style: accepted.",
     f"POST /webhooks/signalmind?token={SM}",
     "{'FirstName': 'Marta', 'Email': 'q@UNIQ@@example.com', 'EventTypeCode': 'S'}", [JSON])
case("signature-signalmind", "unknown-code", "EventTypeCode Z: no mapping, unmapped.",
     f"POST /webhooks/signalmind?token={SM}", '{"EventTypeCode":"Z","Email":"z@UNIQ@@x.com"}',
     [JSON], expect="202 unmapped")
wf_body = json.dumps({"contact_id": "wf@UNIQ@", "first_name": "Ana", "email": "ana@example.com",
                      "customData": {"event": "Nope"}})
for name, path, headers, expect in [
    ("missing", "/webhooks/ghl-workflow", [], "401 signature"),
    ("wrong-header", "/webhooks/ghl-workflow", ["x-webhook-token: nope"], "401 signature"),
    ("right-header", "/webhooks/ghl-workflow", [f"x-webhook-token: {WF}"], "202 unmapped"),
    ("right-query", f"/webhooks/ghl-workflow?token={WF}", [], "202 unmapped"),
    ("ghl-signature-instead", "/webhooks/ghl-workflow", [], "401 signature"),
]:
    case("signature-ghl-workflow", name, f"GHL workflow token: {name.replace('-', ' ')}.",
         "POST " + path, wf_body, [JSON] + headers, expect=expect,
         sign="ghl" if name == "ghl-signature-instead" else None)

# --- signatures: SlickText HMAC-MD5 of the `data` field ---------------------------------------
st_data = json.dumps({"Event": "LoyaltyEventCreated", "Timestamp": "2019-07-12 07:59:21",
                      "attemptNumber": 1,
                      "LoyaltyEvent": {"LoyaltyEventId": "s@UNIQ@", "Type": "credit", "Amount": "2"},
                      "LoyaltyMember": {"LoyaltyMemberId": "m@UNIQ@", "FirstName": "Jerry",
                                        "Balance": 6}})
st_form = "data=" + urllib.parse.quote_plus(st_data)
for name, sign, expect, header in [
    ("valid", "slicktext", "202 accepted", None),
    ("missing", None, "401 signature", "x-slicktext-signature"),
    ("wrong-secret", "slicktext-wrong-secret", "401 signature", "x-slicktext-signature"),
    ("base64-re-encoded", "slicktext-base64", "401 signature", "x-slicktext-signature"),
    ("uppercase-hex", "slicktext-upper", "202 accepted", None),
    ("whole-body-signed", "slicktext-whole-body", "401 signature", "x-slicktext-signature"),
    ("sha256-instead-of-md5", "slicktext-sha256", "401 signature", "x-slicktext-signature"),
    ("truncated-signature", "slicktext-truncated", "401 signature", "x-slicktext-signature"),
    ("signature-with-spaces", "slicktext-spaced", "202 accepted", None),
]:
    case("signature-slicktext", name, f"SlickText signature: {name.replace('-', ' ')}.",
         "POST /webhooks/slicktext", st_form, [FORM], sign=sign, expect=expect,
         expect_header=header)
case("signature-slicktext", "replayed",
     "The same signed delivery twice (SlickText signs no time): the second is a duplicate.",
     "POST /webhooks/slicktext", st_form, [FORM], sign="slicktext", send=2, expect="200 duplicate")
case("signature-slicktext", "retried-attempt-2",
     "A SlickText retry (attemptNumber 2) of an event stored before: a duplicate.",
     "POST /webhooks/slicktext", st_form, [FORM], sign="slicktext", send="2 attempt",
     expect="200 duplicate")
case("signature-slicktext", "tampered-after-signing",
     "The data field changed after it was signed.", "POST /webhooks/slicktext", st_form, [FORM],
     sign="slicktext-tampered", expect="401 signature")
case("signature-slicktext", "json-body-smuggles-signed-data",
     "A plain JSON body (read as JSON by a form source) that carries a signed `data` pair\n"
     "inside one of its strings: the signature covers that pair, not the JSON that would\n"
     "be stored. Refused: a JSON body has no form fields.",
     "POST /webhooks/slicktext",
     json.dumps({"Event": "LoyaltyEventDeleted",
                 "LoyaltyEvent": {"LoyaltyEventId": "forged@UNIQ@"},
                 "LoyaltyMember": {"LoyaltyMemberId": "victim"},
                 "x": "&" + st_form + "&"}), [JSON], sign="slicktext", expect="401 signature")
case("signature-slicktext", "second-data-field-ignored",
     "Two data fields: the first is signed and decoded, the second never read.",
     "POST /webhooks/slicktext", st_form.replace("s%40UNIQ%40", "sd%40UNIQ%40") +
     "&data=%7B%22Event%22%3A%22LoyaltyEventDeleted%22%7D", [FORM], sign="slicktext")
case("signature-slicktext", "data-field-missing", "A form without `data`.",
     "POST /webhooks/slicktext", "x=1&y=2", [FORM], sign="slicktext", expect="401 signature",
     expect_header="data")

# --- form bodies with a broken `data` ---------------------------------------------------------
for name, body, expect, reason in [
    ("data-empty", "data=", "400 malformed", "EOF"),
    ("data-not-json", "data=hello", "400 malformed", "malformed JSON"),
    ("data-truncated-json", "data=%7B%22Event%22%3A", "400 malformed", "EOF"),
    ("data-array", "data=%5B%5D", "400 no_event_type", None),
    ("data-no-event", "data=%7B%22a%22%3A1%7D", "400 no_event_type", None),
    ("data-unknown-event", "data=%7B%22Event%22%3A%22Nope%22%2C%22LoyaltyMember%22%3A%7B%22LoyaltyMemberId%22%3A%22u@UNIQ@%22%7D%7D",
     "202 unmapped", None),
    ("data-raw-json-unencoded", 'data={"Event":"LoyaltyEventCreated","LoyaltyEvent":{"LoyaltyEventId":"r@UNIQ@"}}',
     "202 accepted", None),
    ("data-bad-percent", "data=%ZZ%7B", "400 malformed", "malformed JSON"),
    ("data-single-quotes", "data=%7B%27Event%27%3A%27LoyaltyEventCreated%27%7D", "400 malformed",
     "malformed JSON"),
    ("data-nested-form", "data=data%3D%257B%257D", "400 malformed", "malformed JSON"),
    ("data-key-encoded", "%64ata=" + urllib.parse.quote_plus(st_data.replace("s@UNIQ@", "k@UNIQ@")),
     "202 accepted", None),
    ("semicolon-separator", "x=1;data=%7B%7D", "401 signature", None),
    ("only-ampersands", "&&&&", "401 signature", None),
    ("data-plus-spaces", "data=" + urllib.parse.quote_plus(st_data.replace("s@UNIQ@", "p@UNIQ@")).replace("%20", "+"),
     "202 accepted", None),
]:
    case("form", name, f"SlickText form: {name.replace('-', ' ')} (signed over what `data` reads).",
         "POST /webhooks/slicktext", body, [FORM], sign="slicktext", expect=expect, reason=reason)

# --- GHL: Ed25519 x-ghl-signature, legacy x-wh-signature, timestamps -------------------------
ghl_body = ('{"type":"ContactUpdate","locationId":"@LOCATION@","id":"g@UNIQ@","firstName":"Ana",'
            '"email":"g@UNIQ@@example.com","tags":[],"customFields":[],'
            '"timestamp":"@NOW_ISO@","webhookId":"w@UNIQ@"}')
for name, sign, expect, reason, header in [
    ("valid", "ghl", "202 accepted", None, None),
    ("missing", None, "401 signature", "missing x-ghl-signature", "x-ghl-signature"),
    ("other-key", "ghl-other-key", "401 signature", "does not match", "x-ghl-signature"),
    ("tampered", "ghl-tampered", "401 signature", "does not match", "x-ghl-signature"),
    ("base64url-re-encoded", "ghl-base64url", "401 signature", None, "x-ghl-signature"),
    ("hex-re-encoded", "ghl-hex", "401 signature", None, "x-ghl-signature"),
    ("truncated", "ghl-truncated", "401 signature", "64-byte", "x-ghl-signature"),
    ("not-applicable", "ghl-na", "401 signature", "missing x-ghl-signature", "x-ghl-signature"),
    ("legacy-rsa-only", "ghl-rsa-only", "401 signature", "GHL_WEBHOOK_RSA_PUBLIC_KEY",
     "x-wh-signature"),
    ("valid-with-bogus-legacy", "ghl+rsa", "202 accepted", None, None),
    ("bad-ed25519-with-legacy", "ghl-other-key+rsa", "401 signature", None, "x-ghl-signature"),
    ("signature-of-empty-body", "ghl-empty", "401 signature", "does not match", "x-ghl-signature"),
]:
    case("signature-ghl", name, f"GHL x-ghl-signature: {name.replace('-', ' ')}.",
         "POST /webhooks/ghl", ghl_body, [JSON], sign=sign, expect=expect, reason=reason,
         expect_header=header)
for name, ts, expect in [("expired-3h", "@OLD_ISO@", "401 signature"),
                         ("expired-2020", "2020-01-01T00:00:00Z", "401 signature"),
                         ("expired-unix-style", "2020-01-01 00:00:00", "401 signature"),
                         ("future", "2099-01-01T00:00:00Z", "202 accepted"),
                         ("unparseable", "yesterday", "202 accepted")]:
    case("signature-ghl", f"timestamp-{name}",
         f"A signed GHL webhook whose timestamp is {ts}.", "POST /webhooks/ghl",
         ghl_body.replace("@NOW_ISO@", ts), [JSON], sign="ghl", expect=expect,
         reason="old" if expect.startswith("401") else None)
case("signature-ghl", "timestamp-missing",
     "A signed GHL webhook without a timestamp: nothing to judge its age by; accepted.",
     "POST /webhooks/ghl", ghl_body.replace(',"timestamp":"@NOW_ISO@"', ""), [JSON], sign="ghl")
case("signature-ghl", "replayed",
     "The same signed GHL webhook twice in its window: stored once (webhookId).",
     "POST /webhooks/ghl", ghl_body, [JSON], sign="ghl", send=2, expect="200 duplicate")
case("signature-ghl", "malformed-but-signed", "Signed bytes that are not JSON.",
     "POST /webhooks/ghl", '{"type":', [JSON], sign="ghl", expect="400 malformed")
case("signature-ghl", "unknown-type", "A signed GHL webhook of a type no mapping handles.",
     "POST /webhooks/ghl", ghl_body.replace("ContactUpdate", "InvoiceCreate"), [JSON], sign="ghl",
     expect="202 unmapped")
case("signature-ghl", "another-location",
     "A webhook GHL signed for another location (an app installed elsewhere, or\n"
     "pointed here by someone else): GHL signs every location's webhooks with one key,\n"
     "so the signature does not say whose it is. The source's `route:` reads its\n"
     "locationId: no connection has loc_someone_else, so it is kept as `unmapped`\n"
     "with that reason and never delivered into this location.",
     "POST /webhooks/ghl", ghl_body.replace("@LOCATION@", "loc_someone_else"), [JSON], sign="ghl",
     expect="202 unmapped")
case("signature-ghl", "no-location",
     "A signed GHL webhook without a locationId (company-level events have none): accepted.",
     "POST /webhooks/ghl", ghl_body.replace('"locationId":"@LOCATION@",', ""), [JSON], sign="ghl")

# --- routing: unknown sources and events, internal sources -------------------------------------
for name, path, expect in [
    ("unknown-source", "/webhooks/nosuch", "404 unknown_source"),
    ("source-case", "/webhooks/StickyCards", "404 unknown_source"),
    ("source-encoded-slash", "/webhooks/..%2Fstickycards", "404 unknown_source"),
    ("source-long", "/webhooks/" + "a" * 5000, "404 unknown_source"),
    ("source-percent-nul", "/webhooks/sticky%00cards", "404 unknown_source"),
    ("source-unicode", "/webhooks/st%C3%AFckycards", "404 unknown_source"),
    ("internal-resync", "/webhooks/resync", "401 signature"),
    ("internal-schedule", "/webhooks/schedule", "401 signature"),
]:
    case("routing", name, f"Routing: {name.replace('-', ' ')}.", "POST " + path, sc_body(), [JSON],
         expect=expect, expect_field="source" if "404" in expect else None)
for name, request, expect in [
    ("no-source", "POST /webhooks/", "404 -"),
    ("get-webhook", "GET /webhooks/stickycards", "405 -"),
    ("put-webhook", "PUT /webhooks/stickycards", "405 -"),
    ("extra-segment", "POST /webhooks/stickycards/extra", "404 -"),
]:
    case("routing", name, f"Outside the webhook route: {name.replace('-', ' ')} (the router's own answer).",
         request, sc_body(), [JSON], expect=expect)
for name, body, expect in [
    ("unknown-event", '{"event_type":"NoSuchEvent","customer_id":"c@UNIQ@"}', "202 unmapped"),
    ("event-type-empty", '{"event_type":"","customer_id":"c@UNIQ@"}', "400 no_event_type"),
    ("event-type-object", '{"event_type":{"a":1},"customer_id":"c@UNIQ@"}', "400 no_event_type"),
    ("event-type-array", '{"event_type":["CustomerCreatedEvent"],"customer_id":"c@UNIQ@"}',
     "400 no_event_type"),
    ("event-type-bool", '{"event_type":true,"customer_id":"c@UNIQ@"}', "202 unmapped"),
    ("no-customer", '{"event_type":"CustomerCreatedEvent","email":"nc@UNIQ@@example.com"}',
     "202 accepted"),
    ("event-type-blank", '{"event_type":"   ","customer_id":"c@UNIQ@"}', "400 no_event_type"),
]:
    case("routing", name, f"Sticky Cards event: {name.replace('-', ' ')}.", SC_URL, body, [JSON],
         expect=expect)
case("routing", "workflow-default-event",
     "A workflow webhook without customData.event is the default WorkflowWebhook.",
     f"POST /webhooks/ghl-workflow?token={WF}", '{"contact_id":"d@UNIQ@"}', [JSON])

# --- headers -------------------------------------------------------------------------------
for name, headers, expect in [
    ("many-headers", [f"x-h{i}: {i}" for i in range(90)], "202 accepted"),
    ("huge-header", ["x-big: " + "a" * 60000], "202 accepted"),
    ("duplicate-token-headers", [f"x-webhook-token: {SC}", "x-webhook-token: nope"],
     "202 accepted"),
    ("duplicate-token-headers-wrong-first", ["x-webhook-token: nope", f"x-webhook-token: {SC}"],
     "401 signature"),
]:
    case("headers", name, f"Headers: {name.replace('-', ' ')}.",
         "POST /webhooks/stickycards" + ("" if "token" in name else f"?token={SC}"),
         sc_body(), [JSON] + headers, expect=expect)


def main():
    for sub in os.listdir(ROOT):
        if os.path.isdir(os.path.join(ROOT, sub)):
            shutil.rmtree(os.path.join(ROOT, sub))
    for key, data in sorted(cases.items()):
        path = os.path.join(ROOT, key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
    print(f"{len(cases)} cases")


main()
