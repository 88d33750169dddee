from __future__ import annotations

import json
from email.message import EmailMessage

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from postwarden.inbound.mail import dsn
from postwarden.inbound.mail.dsn import Kind, Report, parse, parse_bounce_lines, split_mbox
from postwarden.outbound.channels.email import compose

HUMAN = "This is the mail system at host mx.example.org.\n\nYour message could not be delivered.\n"


def _original(token: str = "tok-123") -> EmailMessage:
    orig = EmailMessage()
    orig["From"] = "Shop <news@shop.example>"
    orig["To"] = "kijitora@example.jp"
    orig["Subject"] = "Your order"
    orig["Message-ID"] = "<abc.123@shop.example>"
    orig["X-Postwarden-Id"] = token
    orig.set_content("Hello\n")
    return orig


def _status_part(blocks: list[list[tuple[str, str]]]) -> EmailMessage:
    """A message/delivery-status part: one header block per message / recipient."""
    part = EmailMessage()
    part["Content-Type"] = "message/delivery-status"
    subs = []
    for block in blocks:
        sub = EmailMessage()
        for name, value in block:
            sub[name] = value
        subs.append(sub)
    part.set_payload(subs)
    return part


def _dsn(
    groups: list[dict[str, str]],
    *,
    human: str = HUMAN,
    original: EmailMessage | None = None,
    headers_only: bool = False,
    subject: str = "Undelivered Mail Returned to Sender",
) -> bytes:
    msg = EmailMessage()
    msg["From"] = "MAILER-DAEMON@mx.example.org (Mail Delivery System)"
    msg["To"] = "news@shop.example"
    msg["Subject"] = subject
    msg["Auto-Submitted"] = "auto-replied"
    msg.set_content(human)
    msg.make_mixed()
    blocks = [
        [
            ("Reporting-MTA", "dns; mx.example.org"),
            ("Arrival-Date", "Thu, 1 May 2025 10:00:00 +0000"),
        ]
    ]
    blocks += [list(g.items()) for g in groups]
    msg.attach(_status_part(blocks))
    if original is not None:
        if headers_only:
            part = EmailMessage()
            part["Content-Type"] = "text/rfc822-headers"
            head = original.as_string().split("\n\n", 1)[0]
            part.set_payload(head + "\n")
            msg.attach(part)
        else:
            msg.add_attachment(original)
    msg.replace_header("Content-Type", 'multipart/report; report-type="delivery-status"')
    msg.set_boundary("BOUNDARY-1")
    return msg.as_bytes()


def _failed(addr: str, status: str, diag: str, action: str = "failed") -> dict[str, str]:
    return {
        "Final-Recipient": f"rfc822; {addr}",
        "Action": action,
        "Status": status,
        "Remote-MTA": "dns; mx.example.jp",
        "Diagnostic-Code": f"smtp; {diag}",
    }


def test_hard_bounce_with_returned_message() -> None:
    raw = _dsn(
        [_failed("KijiTora@Example.JP", "5.1.1", "550 5.1.1 <kijitora@example.jp>: User unknown")],
        original=_original("tok-9"),
    )
    report = parse(raw)
    assert report.kind is Kind.BOUNCE
    (r,) = report.recipients
    assert r.address == "KijiTora@example.jp"
    assert r.kind is Kind.BOUNCE
    assert r.status == "5.1.1"
    assert r.reply_code == 550
    assert r.remote_mta == "mx.example.jp"
    assert r.verdict is not None and r.verdict.reason == "userunknown" and r.verdict.hard
    assert report.original_message_id == "abc.123@shop.example"
    assert report.returned_headers["x-postwarden-id"] == "tok-9"
    assert report.subject == "Undelivered Mail Returned to Sender"


def test_boundaries_are_matched_without_compiling_a_regex_per_mail(monkeypatch) -> None:
    """Every mail has boundaries of its own: the parser must not compile a regex for each
    (on Python < 3.13 the standard library did; dsn backports its fix). Boundaries with regex
    metacharacters still match exactly, and a line that only starts like one is body text."""
    import re

    original = _original("tok-7")
    original.add_alternative("<p>Hello</p>", subtype="html")  # a multipart inside
    original.set_boundary("alt.(1)+[x]?")
    raw = _dsn(
        [_failed("kijitora@example.jp", "5.2.2", "552 5.2.2 Mailbox full")],
        human=HUMAN + "--=_Q.*+?x is a line that only starts like the boundary\n",
        original=original,
    ).replace(b"BOUNDARY-1", b"=_Q.*+?")
    compiled: list[str] = []
    real_compile = re.compile
    monkeypatch.setattr(re, "compile", lambda p, f=0: compiled.append(p) or real_compile(p, f))
    report = parse(raw)
    assert compiled == []
    (r,) = report.recipients
    assert (r.address, r.status, r.verdict and r.verdict.reason) == (
        "kijitora@example.jp",
        "5.2.2",
        "mailboxfull",
    )
    assert report.returned_headers["x-postwarden-id"] == "tok-7"


def test_text_rfc822_headers_are_read() -> None:
    raw = _dsn(
        [_failed("a@example.jp", "5.2.2", "552 5.2.2 Mailbox full")],
        original=_original("tok-h"),
        headers_only=True,
    )
    report = parse(raw)
    assert report.returned_headers["x-postwarden-id"] == "tok-h"
    assert report.original_message_id == "abc.123@shop.example"
    assert report.recipients[0].verdict.reason == "mailboxfull"
    assert report.recipients[0].verdict.hard is False


def test_several_recipients_and_original_recipient() -> None:
    groups = [
        _failed("a@example.jp", "5.1.1", "550 5.1.1 User unknown"),
        {
            **_failed("b@example.jp", "4.2.2", "452 4.2.2 Over quota", "delayed"),
            "Original-Recipient": "rfc822; alias@example.jp",
        },
        {"Final-Recipient": "rfc822; c@example.jp", "Action": "delivered", "Status": "2.0.0"},
    ]
    report = parse(_dsn(groups))
    assert report.kind is Kind.BOUNCE
    kinds = {r.address: r.kind for r in report.recipients}
    assert kinds == {
        "a@example.jp": Kind.BOUNCE,
        "b@example.jp": Kind.DELAY,
        "c@example.jp": Kind.SUCCESS,
    }
    b = report.recipients[1]
    assert b.original == "alias@example.jp"
    assert b.verdict is not None and b.verdict.reason == "mailboxfull"
    assert report.recipients[2].verdict is None


def test_groups_without_blank_line_between_them() -> None:
    block = [
        ("Final-Recipient", "rfc822; one@example.jp"),
        ("Action", "failed"),
        ("Status", "5.1.1"),
        ("Final-Recipient", "rfc822; two@example.jp"),
        ("Action", "failed"),
        ("Status", "5.2.2"),
    ]
    msg = EmailMessage()
    msg["From"] = "MAILER-DAEMON@example.org"
    msg["Subject"] = "failure"
    msg.set_content("failed")
    msg.make_mixed()
    msg.attach(_status_part([block]))
    msg.replace_header("Content-Type", "multipart/report; report-type=delivery-status")
    msg.set_boundary("B2")
    report = parse(msg.as_bytes())
    got = [(r.address, r.status, r.verdict.reason) for r in report.recipients]
    assert got == [
        ("one@example.jp", "5.1.1", "userunknown"),
        ("two@example.jp", "5.2.2", "mailboxfull"),
    ]


def test_delay_notice() -> None:
    raw = _dsn(
        [
            _failed(
                "slow@example.jp",
                "4.4.1",
                "connect to mx.example.jp: Connection timed out",
                action="delayed",
            )
        ],
        subject="Delayed Mail (still being retried)",
    )
    report = parse(raw)
    assert report.kind is Kind.DELAY
    assert report.recipients[0].verdict is not None
    assert report.recipients[0].verdict.hard is False


def test_success_notice() -> None:
    raw = _dsn(
        [{"Final-Recipient": "rfc822; ok@example.jp", "Action": "relayed", "Status": "2.0.0"}],
        subject="Successful Mail Delivery Report",
    )
    report = parse(raw)
    assert report.kind is Kind.SUCCESS
    assert report.recipients[0].kind is Kind.SUCCESS


def test_arf_complaint() -> None:
    msg = EmailMessage()
    msg["From"] = "staff@fbl.example.net"
    msg["Subject"] = "FW: Your order"
    msg.set_content("This is an email abuse report")
    msg.make_mixed()
    fb = EmailMessage()
    fb["Content-Type"] = "message/feedback-report"
    fb.set_payload(
        "Feedback-Type: abuse\nUser-Agent: FBL/1.0\nVersion: 1\n"
        "Original-Rcpt-To: victim@example.net\nSource-IP: 192.0.2.1\n"
    )
    msg.attach(fb)  # a text-like payload: the generator writes it as is
    msg.add_attachment(_original("tok-c"))
    msg.replace_header("Content-Type", "multipart/report; report-type=feedback-report")
    msg.set_boundary("B3")
    report = parse(msg.as_bytes())
    assert report.kind is Kind.COMPLAINT
    assert report.feedback_type == "abuse"
    assert report.recipients[0].address == "victim@example.net"
    assert report.recipients[0].kind is Kind.COMPLAINT
    assert report.returned_headers["x-postwarden-id"] == "tok-c"


def test_autoreply_is_not_a_bounce() -> None:
    msg = EmailMessage()
    msg["From"] = "kijitora@example.jp"
    msg["To"] = "news@shop.example"
    msg["Subject"] = "Out of Office: Your order"
    msg["Auto-Submitted"] = "auto-replied"
    msg.set_content("I am out of the office until Monday.")
    report = parse(msg.as_bytes())
    assert report.kind is Kind.AUTOREPLY
    assert report.recipients == ()


def test_plain_text_exim_bounce_with_inline_original() -> None:
    raw = (
        b"From: Mail Delivery System <Mailer-Daemon@mx.example.org>\n"
        b"To: news@shop.example\n"
        b"Subject: Mail delivery failed: returning message to sender\n"
        b"X-Failed-Recipients: gone@example.jp\n"
        b"Auto-Submitted: auto-replied\n\n"
        b"This message was created automatically by mail delivery software.\n\n"
        b"A message that you sent could not be delivered to one or more of its\n"
        b"recipients. This is a permanent error. The following address(es) failed:\n\n"
        b"  gone@example.jp\n"
        b"    SMTP error from remote mail server after RCPT TO:<gone@example.jp>:\n"
        b"    host mx.example.jp [192.0.2.1]: 550 5.1.1 <gone@example.jp>: User unknown\n\n"
        b"------ This is a copy of the message, including all the headers. ------\n\n"
        b"Message-ID: <m1@shop.example>\n"
        b"X-Postwarden-Id: tok-x\n"
        b"From: news@shop.example\nTo: gone@example.jp\nSubject: hi\n\nbody\n"
    )
    report = parse(raw)
    assert report.kind is Kind.BOUNCE
    (r,) = report.recipients
    assert r.address == "gone@example.jp"
    assert r.status == "5.1.1"
    assert r.verdict is not None and r.verdict.reason == "userunknown"
    assert report.returned_headers["x-postwarden-id"] == "tok-x"
    assert report.original_message_id == "m1@shop.example"


def test_ses_json_notification() -> None:
    note = {
        "notificationType": "Bounce",
        "bounce": {
            "bounceType": "Permanent",
            "bouncedRecipients": [
                {
                    "emailAddress": "x@example.jp",
                    "status": "5.1.1",
                    "diagnosticCode": "smtp; 550 5.1.1 user unknown",
                }
            ],
        },
        "mail": {"messageId": "m-1", "headers": [{"name": "X-Postwarden-Id", "value": "t1"}]},
    }
    msg = EmailMessage()
    msg["From"] = "no-reply@sns.amazonaws.com"
    msg["Subject"] = "AWS Notification Message"
    msg.set_content(json.dumps(note))
    report = parse(msg.as_bytes())
    assert report.kind is Kind.BOUNCE
    assert report.recipients[0].address == "x@example.jp"
    assert report.recipients[0].verdict.reason == "userunknown"
    assert report.returned_headers["x-postwarden-id"] == "t1"


def test_ordinary_mail_is_unknown() -> None:
    msg = EmailMessage()
    msg["From"] = "friend@example.jp"
    msg["Subject"] = "lunch?"
    msg.set_content("See you at noon, mail me at friend@example.jp")
    report = parse(msg.as_bytes())
    assert report.kind is Kind.UNKNOWN
    assert report.recipients == ()


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x00\xff\xfe",
        b"Content-Type: multipart/report; boundary=x\n\n--x\n",
        b"From: \n\n",
        b"Subject: =?utf-8?q?broken\n\n\xff\xff",
        b"Subject: =?utf-8?b?YWJj?= and =?utf-8?b?Y?=\n\nx",  # bad base64: HeaderParseError
        b"\r\n\r\n\r\n",
    ],
)
def test_garbage_is_unknown(raw: bytes) -> None:
    report = parse(raw)
    assert (report.kind, report.recipients) == (Kind.UNKNOWN, ())


def test_truncated_dsn_reads_what_is_left() -> None:
    """Cut anywhere, a DSN parses; cut after its delivery-status part, it still gives the
    recipient, its status and reason."""
    raw = _dsn([_failed("a@example.jp", "5.1.1", "550 5.1.1 User unknown")], original=_original())
    whole = raw.index(b"--BOUNDARY-1", raw.index(b"Diagnostic-Code"))
    read = 0
    for cut in range(0, len(raw) + 1, 13):
        report = parse(raw[:cut])
        if cut >= whole:
            (r,) = report.recipients
            assert (r.address, r.status, r.verdict and r.verdict.reason) == (
                "a@example.jp",
                "5.1.1",
                "userunknown",
            )
            read += 1
    assert read > 20


def test_a_fault_of_the_parser_is_raised_not_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    """The caller records a parser fault as such (``apply`` stores the mail as "error"); a
    parse that hid it as "unknown" would lose the bounce silently."""

    def broken(*args: object) -> None:
        raise RuntimeError("walk failed")

    monkeypatch.setattr(dsn, "_walk", broken)
    with pytest.raises(RuntimeError, match="walk failed"):
        parse(_dsn([_failed("a@example.jp", "5.1.1", "550 5.1.1 User unknown")]))


def test_split_mbox() -> None:
    one = b"From: a@example.jp\nSubject: one\n\nbody\n"
    two = b"From: b@example.jp\nSubject: two\n\nbody\n"
    mbox = (
        b"From MAILER-DAEMON Thu Apr 29 23:34:45 2010\n"
        + one
        + b"From MAILER-DAEMON Thu Apr 29 23:34:46 2010\n"
        + two
    )
    assert split_mbox(mbox) == [one, two]
    assert split_mbox(one) == [one]
    assert split_mbox(b"From x Thu Apr 29 23:34:45 2010\n" + one) == [one]


def test_parse_bounce_lines(tmp_path) -> None:
    path = tmp_path / "b.eml"
    path.write_bytes(_dsn([_failed("a@example.jp", "5.1.1", "550 5.1.1 User unknown")]))
    assert parse_bounce_lines(str(path)) == [
        {
            "file": str(path),
            "recipient": "a@example.jp",
            "status": "5.1.1",
            "reason": "userunknown",
            "hard": True,
            "kind": "bounce",
        }
    ]
    other = tmp_path / "o.eml"
    other.write_bytes(b"From: x@example.jp\nSubject: hello\n\nhi\n")
    (line,) = parse_bounce_lines(str(other))
    assert line["kind"] == "unknown" and line["recipient"] is None and line["hard"] is None
    with pytest.raises(OSError):
        parse_bounce_lines(str(tmp_path / "missing.eml"))


_SAMPLE = _dsn([_failed("a@example.jp", "5.1.1", "550 5.1.1 User unknown")], original=_original())
_RETURNED_AT = _SAMPLE.index(b"Content-Type: message/rfc822")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_random_bytes_never_raise(raw: bytes) -> None:
    assert isinstance(parse(raw), Report)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(min_value=0, max_value=len(_SAMPLE)),
    st.binary(max_size=64),
    st.integers(min_value=0, max_value=len(_SAMPLE)),
)
def test_mutated_mime_never_raises(cut: int, junk: bytes, at: int) -> None:
    raw = _SAMPLE[:at] + junk + _SAMPLE[at:]
    assert isinstance(parse(raw[: cut + len(junk)]), Report)


@settings(max_examples=100, deadline=None)
@given(
    st.binary(max_size=64).filter(lambda b: b"--" not in b),
    st.integers(min_value=0, max_value=len(_SAMPLE) - _RETURNED_AT),
    st.integers(min_value=0, max_value=len(_SAMPLE) - _RETURNED_AT),
)
def test_damage_in_the_returned_message_keeps_the_bounce(junk: bytes, at: int, cut: int) -> None:
    """Junk in, or a cut of, the returned message (where relays mangle) leaves the report's
    recipient, status and reason as they were."""
    raw = _SAMPLE[: _RETURNED_AT + at] + junk + _SAMPLE[_RETURNED_AT + at :]
    (r,) = parse(raw[: _RETURNED_AT + cut + len(junk)]).recipients
    assert (r.address, r.status, r.verdict and r.verdict.reason) == (
        "a@example.jp",
        "5.1.1",
        "userunknown",
    )


def _composed(text: str, html: str | None = None, subject: str = "Grüße aus Köln") -> bytes:
    """A message as Postwarden sends it: UTF-8 text goes out as 8bit."""
    content = compose.Content("shop@acme.test", "Läden", subject, text, html)
    return compose.Composer().build(
        content_id=1,
        content=content,
        to="kijitora@example.jp",
        token="tok8bit",
        message_id_domain="bounces.acme.test",
    )


def _bounce_of(original: bytes, *, returned: str, blank_lines: bytes = b"\r\n") -> bytes:
    """A DSN returning ``original`` whole (message/rfc822) or its headers
    (text/rfc822-headers), after ``blank_lines`` as some MTAs write them, 8 bits untouched."""
    body = original if returned == "message/rfc822" else original.split(b"\r\n\r\n")[0]
    return (
        b"From: MAILER-DAEMON@mx.example.jp\r\n"
        b"To: b+tok8bit@bounces.acme.test\r\n"
        b"Subject: Undelivered Mail Returned to Sender\r\n"
        b"MIME-Version: 1.0\r\n"
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="R8"\r\n'
        b"\r\n--R8\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        b"Die Nachricht konnte nicht zugestellt werden.\r\n"
        b"\r\n--R8\r\nContent-Type: message/delivery-status\r\n\r\n"
        b"Reporting-MTA: dns; mx.example.jp\r\n\r\n"
        b"Final-Recipient: rfc822; kijitora@example.jp\r\nAction: failed\r\n"
        b"Status: 5.1.1\r\nDiagnostic-Code: smtp; 550 5.1.1 User unknown\r\n"
        b"\r\n--R8\r\nContent-Type: "
        + returned.encode()
        + b"\r\n\r\n"
        + blank_lines
        + body
        + b"\r\n--R8--\r\n"
    )


@pytest.mark.parametrize("returned", ["message/rfc822", "text/rfc822-headers"])
@pytest.mark.parametrize("blank_lines", [b"", b"\r\n", b"\r\n\r\n"])
@pytest.mark.parametrize(
    "original",
    [
        pytest.param(_composed("Hallo Welt, schöne Grüße!"), id="8bit-text"),
        pytest.param(_composed("Ünïcödé", "<p>Ünïcödé ✓</p>", subject="ok"), id="8bit-alt"),
        pytest.param(_composed("plain ascii"), id="ascii"),
    ],
)
def test_postwardens_own_8bit_mail_bounced_back(
    original: bytes, returned: str, blank_lines: bytes
) -> None:
    """Issue 13: a returned message after a blank line, holding 8-bit bytes, was read as
    "unknown". Postwarden sends UTF-8 as 8bit, so this is what its own bounces look like."""
    assert b"8bit" in original or original.isascii()
    report = parse(_bounce_of(original, returned=returned, blank_lines=blank_lines))
    assert report.kind is Kind.BOUNCE
    (r,) = report.recipients
    assert (r.address, r.status, r.verdict and r.verdict.reason) == (
        "kijitora@example.jp",
        "5.1.1",
        "userunknown",
    )
    assert report.returned_headers["x-postwarden-id"] == "tok8bit"
    assert report.original_message_id == "tok8bit@bounces.acme.test"


def test_eight_bit_in_a_global_delivery_status_is_read_as_utf8() -> None:
    raw = (
        b"From: MAILER-DAEMON@mx.example.jp\r\nSubject: Undelivered\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/report; report-type=global-delivery-status; boundary="G"\r\n'
        b"\r\n--G\r\nContent-Type: text/plain\r\n\r\nfailed\r\n"
        b"--G\r\nContent-Type: message/global-delivery-status\r\n\r\n"
        b"Reporting-MTA: dns; mx.example.jp\r\n\r\n"
        b"Final-Recipient: utf-8; " + "jürgen@example.jp".encode() + b"\r\nAction: failed\r\n"
        b"Status: 5.1.1\r\n\r\n"
        b"Final-Recipient: utf-8; " + "zoë@example.jp".encode() + b"\r\nAction: failed\r\n"
        b"Status: 5.2.2\r\n\r\n--G--\r\n"
    )
    report = parse(raw)
    assert [(r.address, r.status) for r in report.recipients] == [
        ("jürgen@example.jp", "5.1.1"),
        ("zoë@example.jp", "5.2.2"),
    ]


def test_parse_bounce_lines_reports_a_parser_fault(tmp_path, monkeypatch) -> None:
    path = tmp_path / "b.eml"
    path.write_bytes(b"Subject: x\n\nx\n")

    def broken(*args: object) -> None:
        raise RuntimeError("walk failed")

    monkeypatch.setattr(dsn, "_walk", broken)
    assert parse_bounce_lines(str(path)) == [
        {"file": str(path), "kind": "error", "error": "RuntimeError: walk failed"}
    ]


def test_declared_boundary_missing_uses_the_boundary_present() -> None:
    raw = _dsn([_failed("a@example.jp", "5.1.1", "550 5.1.1 User unknown")])
    raw = raw.replace(b'boundary="BOUNDARY-1"', b'boundary="SOMETHING-ELSE"')
    report = parse(raw)
    assert [r.address for r in report.recipients] == ["a@example.jp"]


def test_bounce_forwarded_as_attachment() -> None:
    inner = parse(_dsn([_failed("a@example.jp", "5.2.2", "552 5.2.2 Mailbox full")]))
    assert inner.kind is Kind.BOUNCE
    outer = EmailMessage()
    outer["From"] = "helpdesk@shop.example"
    outer["Subject"] = "Fwd: Undelivered Mail Returned to Sender"
    outer.set_content("see attached")
    dsn_msg = EmailMessage()
    raw_inner = _dsn([_failed("a@example.jp", "5.2.2", "552 5.2.2 Mailbox full")])
    outer.add_attachment(raw_inner, maintype="application", subtype="octet-stream")
    # as message/rfc822
    outer2 = EmailMessage()
    outer2["From"] = "helpdesk@shop.example"
    outer2["Subject"] = "Fwd: returned"
    outer2.set_content("see attached")
    from email import message_from_bytes, policy

    dsn_msg = message_from_bytes(raw_inner, policy=policy.default)
    outer2.add_attachment(dsn_msg)
    report = parse(outer2.as_bytes())
    assert report.kind is Kind.BOUNCE
    assert report.recipients[0].verdict.reason == "mailboxfull"


def test_exim_file_destination_reports_the_generating_address() -> None:
    human = (
        "The following address(es) failed:\n\n"
        "  save to /var/spool/mail/box/nyaan\n"
        "    generated by nyaan@example.jp\n"
        "    mailbox is full: retry timeout exceeded\n"
    )
    group = {
        "Final-Recipient": "rfc822;/var/spool/mail/box/nyaan",
        "Action": "failed",
        "Status": "5.0.0",
    }
    report = parse(_dsn([group], human=human))
    (r,) = report.recipients
    assert r.address == "nyaan@example.jp"
    assert r.verdict.reason == "mailboxfull"


def test_ses_notification_inside_sns_envelope() -> None:
    note = {
        "notificationType": "Bounce",
        "bounce": {
            "bouncedRecipients": [
                {
                    "emailAddress": "y@example.jp",
                    "status": "5.2.2",
                    "diagnosticCode": "smtp; 552 5.2.2 Mailbox full",
                }
            ]
        },
        "mail": {},
    }
    envelope = {"Type": "Notification", "Message": json.dumps(note)}
    text = json.dumps(envelope)
    wrapped = "\n".join(text[i : i + 76] for i in range(0, len(text), 76))  # SNS line wrapping
    msg = EmailMessage()
    msg["From"] = "no-reply@sns.amazonaws.com"
    msg["Subject"] = "AWS Notification Message"
    msg.set_content(wrapped)
    report = parse(msg.as_bytes())
    assert [(r.address, r.verdict.reason) for r in report.recipients] == [
        ("y@example.jp", "mailboxfull")
    ]


def test_microsoft_jmrp_complaint() -> None:
    msg = EmailMessage()
    msg["From"] = "staff@hotmail.com"
    msg["Subject"] = "complaint about message from 192.0.2.1"
    msg.set_content("")
    orig = _original("tok-j")
    orig["X-HmXmrOriginalRecipient"] = "victim@hotmail.com"
    msg.add_attachment(orig)
    report = parse(msg.as_bytes())
    assert report.kind is Kind.COMPLAINT
    assert report.recipients[0].address == "victim@hotmail.com"
    assert report.returned_headers["x-postwarden-id"] == "tok-j"


def test_sendmail_transcript_of_another_connection_is_not_this_recipients() -> None:
    raw = (
        b"From: Mail Delivery Subsystem <MAILER-DAEMON@relay.example.org>\n"
        b"To: news@shop.example\n"
        b"Subject: Returned mail: see transcript for details\n\n"
        b"The original message was received at Thu, 1 May 2025 10:00:00 +0000\n"
        b"from localhost [127.0.0.1]\n\n"
        b"   ----- The following addresses had permanent fatal errors -----\n"
        b"<someone@no-such-domain.example>\n\n"
        b"   ----- Transcript of session follows -----\n"
        b"550 5.1.2 <someone@no-such-domain.example>... Host unknown (Name server: "
        b"no-such-domain.example: host not found)\n"
        b"While talking to mx2.example.net.:\n"
        b">>> QUIT\n"
        b"<<< 421 4.3.2 mx2.example.net Service shutting down\n"
        b"421 mx2.example.net (smtp)... Deferred: Connection reset by peer during greeting "
        b"wait with mx2.example.net\n\n"
        b"   ----- Original message follows -----\n"
        b"From: news@shop.example\nTo: someone@no-such-domain.example\nSubject: hi\n\nbody\n"
    )
    (r,) = parse(raw).recipients
    assert r.address == "someone@no-such-domain.example"
    assert r.verdict is not None and r.verdict.reason == "hostunknown"
    assert "greeting" not in r.diagnostic


def test_remote_mta_reaches_the_classifier() -> None:
    group = _failed(
        "someone@yahoo.example",
        "4.7.0",
        "421 4.7.0 [TSS04] Messages from 203.0.113.7 temporarily deferred due to unexpected "
        "volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes",
    )
    group["Remote-MTA"] = "dns; mta6.am0.yahoodns.net"
    (r,) = parse(_dsn([group], original=_original())).recipients
    assert r.remote_mta == "mta6.am0.yahoodns.net"
    assert r.verdict is not None and r.verdict.reason == "rejected"
    assert not r.verdict.hard
