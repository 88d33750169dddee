from __future__ import annotations

import pytest

from postwarden.domain.classify import (
    REASONS,
    Verdict,
    classify,
    describe,
    retry_after,
    smtp_command,
)

# (server words, status, reply code, expected reason). Status/reply None: read from the text.
CASES = [
    # --- invalid address ------------------------------------------------------------------
    (
        "550 5.1.1 <kijitora@example.jp>: Recipient address rejected: User unknown in local "
        "recipient table",
        None,
        None,
        "userunknown",
    ),
    (
        "550-5.1.1 The email account that you tried to reach does not exist. Please try "
        "double-checking the recipient's email address for typos",
        None,
        None,
        "userunknown",
    ),
    (
        "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup",
        None,
        None,
        "userunknown",
    ),
    (
        "550 5.4.1 Recipient address rejected: Access denied. AS(201806281) "
        "[DB5EUR03FT033.eop-EUR03.prod.protection.outlook.com]",
        None,
        None,
        "userunknown",
    ),
    (
        "554 delivery error: dd This user doesn't have a yahoo.com account "
        "(nobody@yahoo.com) [0] - mta1061.mail.ne1.yahoo.com",
        None,
        None,
        "userunknown",
    ),
    ("550 5.1.1 <x@icloud.com>: user does not exist", None, None, "userunknown"),
    ("Sorry, no mailbox here by that name. (#5.1.1)", None, None, "userunknown"),
    (
        "550 Requested action not taken: mailbox unavailable (in reply to RCPT TO command)",
        None,
        None,
        "userunknown",
    ),
    (
        "550 5.1.2 Host unknown (Name server: example.invalid: host not found)",
        None,
        None,
        "hostunknown",
    ),
    (
        "Host or domain name not found. Name service error for name=example.invalid type=A: "
        "Host not found",
        "5.4.4",
        None,
        "hostunknown",
    ),
    ("556 5.1.10 Recipient address has null MX", None, None, "notaccept"),
    ("550 5.1.6 Recipient addresses in this domain have moved", None, None, "hasmoved"),
    ("551 User not local; please try <new@example.org>", None, 551, "hasmoved"),
    # --- mailbox problems -----------------------------------------------------------------
    (
        "452 4.2.2 The email account that you tried to reach is over quota",
        None,
        None,
        "mailboxfull",
    ),
    ("552 5.2.2 Mailbox full", None, None, "mailboxfull"),
    ("550 5.7.1 Email quota exceeded", None, None, "mailboxfull"),  # Gmail, generic 5.7.1
    (
        "552-5.2.2 The email account that you tried to reach is out of storage space and inactive",
        None,
        None,
        "mailboxfull",
    ),
    (  # Exchange's store names the exception, no space in it, with a generic 5.2.0
        "554 5.2.0 STOREDRV.Deliver.Exception:QuotaExceededException."
        "MapiExceptionShutoffQuotaExceeded; Failed to process message",
        None,
        None,
        "mailboxfull",
    ),
    ("550 5.2.1 The email account that you tried to reach is disabled", None, None, "suspend"),
    ("554 5.3.4 Message too big for system", None, None, "mesgtoobig"),
    ("552 5.2.3 Message length exceeds administrative limit", None, None, "exceedlimit"),
    (  # Gmail, per recipient: "please resend later" is not a block of the sender
        "450-4.2.1 The user you are trying to contact is receiving mail too quickly. Please "
        "resend your message at a later time.",
        None,
        None,
        "speeding",
    ),
    # --- spam / blocked -------------------------------------------------------------------
    (
        "554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org",
        None,
        None,
        "blocked",
    ),
    ("550 5.7.606 Access denied, banned sending IP [192.0.2.1]", None, None, "blocked"),
    (
        "550 5.7.1 Our system has detected that this message is likely unsolicited mail",
        None,
        None,
        "spamdetected",
    ),
    ("554 5.7.1 The message was rejected because it contains a virus", None, None, "virusdetected"),
    (
        "550 5.7.25 The IP address sending this message does not have a PTR record setup",
        None,
        None,
        "requireptr",
    ),
    (
        "451 4.7.650 The mail server [192.0.2.1] has been temporarily rate limited due to IP "
        "reputation",
        None,
        None,
        "badreputation",
    ),
    # --- policy / authentication ----------------------------------------------------------
    (
        "550-5.7.26 Unauthenticated email from example.jp is not accepted due to domain's "
        "DMARC policy",
        None,
        None,
        "authfailure",
    ),
    ("550 5.7.23 SPF validation failed", None, None, "authfailure"),
    ("554 5.7.1 <relay@example.org>: Relay access denied", None, None, "norelaying"),
    ("550 5.1.8 Sender address rejected: Domain not found", None, None, "rejected"),
    ("550 5.7.1 Message rejected due to local policy", None, None, "policyviolation"),
    (
        "550 5.7.1 This message is not RFC 5322 compliant. There are multiple From headers",
        None,
        None,
        "notcompliantrfc",
    ),
    ("554 5.6.0 Message contains invalid header", None, None, "contenterror"),
    # --- rate limits, network, system -------------------------------------------------------
    ("421 4.7.0 Too many concurrent SMTP connections from this IP", None, None, "toomanyconn"),
    ("451 4.7.1 Please try again slower", None, None, "speeding"),
    ("Host not found, try again", "4.4.3", None, "networkerror"),
    ("554 5.4.6 Hop count exceeded - possible mail loop", None, None, "networkerror"),
    ("452 4.3.1 Insufficient system storage", None, None, "systemfull"),
    ("451 4.3.0 Local configuration error", None, None, "systemerror"),
    (
        "I'm not going to try again; this message has been in the queue too long.",
        None,
        None,
        "expired",
    ),
    ("Retry timeout exceeded", "4.4.7", None, "expired"),
    # --- codes alone ------------------------------------------------------------------------
    ("", "5.1.1", None, "userunknown"),
    ("", "4.2.2", None, "mailboxfull"),
    ("", "5.7.26", None, "authfailure"),
    ("", None, 552, "mailboxfull"),
    ("550 something odd happened", None, None, "onhold"),
    ("something odd happened", None, None, "undefined"),
    ("", None, None, "undefined"),
]


@pytest.mark.parametrize(("text", "status", "reply", "reason"), CASES)
def test_rule_table(text: str, status: str | None, reply: int | None, reason: str) -> None:
    verdict = classify(text, status=status, reply_code=reply)
    assert verdict.reason == reason, text


def test_text_beats_generic_code() -> None:
    assert classify("Email quota exceeded", status="5.7.1").reason == "mailboxfull"
    assert classify("Recipient address rejected: Access denied", status="5.4.1").reason == (
        "userunknown"
    )
    assert classify("Access denied", status="5.7.1").reason == "securityerror"


def test_user_unknown_after_data_is_filtered() -> None:
    # The recipient's server accepted RCPT TO and refused the message itself.
    text = "550 Unknown user nobody@example.jp (in reply to end of DATA command)"
    assert classify(text).reason == "filtered"
    assert classify("550 User unknown", command="DATA").reason == "filtered"
    assert classify("550 User unknown", command="RCPT").reason == "userunknown"


def test_rejected_at_mail_from_is_sender_side() -> None:
    text = "SMTP error from remote mail server after MAIL FROM:<a@example.jp>: 550 Access denied"
    assert classify(text).reason == "rejected"


@pytest.mark.parametrize(
    ("text", "status", "reply", "hard"),
    [
        ("User unknown", "5.1.1", 550, True),
        ("User unknown", "4.1.1", 450, True),  # hard by reason, not by 4xx/5xx
        ("Domain not found", "5.1.2", None, True),
        ("Mailbox full", "5.2.2", 552, False),  # a 5.x.x mailboxfull is soft
        ("Recipient address has null MX", "5.1.10", 556, True),
        ("Host/domain does not accept mail", "4.3.2", 421, False),  # temporary notaccept
        ("Host does not accept mail, try again later", None, None, False),
        ("Blocked using spamhaus", "5.7.1", 554, False),
    ],
)
def test_hard_rule(text: str, status: str | None, reply: int | None, hard: bool) -> None:
    assert classify(text, status=status, reply_code=reply).hard is hard


def test_status_and_reply_code_read_from_text() -> None:
    verdict = classify("host mx.example.jp[192.0.2.1] said: 452 4.2.2 Over quota")
    assert verdict.reason == "mailboxfull"
    # IP addresses are not status codes
    assert classify("connect to 10.5.1.1: Connection refused").reason == "blocked"


@pytest.mark.parametrize("reason", REASONS)
def test_every_reason_is_described(reason: str) -> None:
    group, explanation, next_step = describe(reason)
    assert group and explanation.endswith(".") and next_step.endswith(".")
    verdict = classify("", status=None)
    assert isinstance(verdict, Verdict)


def test_describe_expired_and_unknown_names() -> None:
    assert describe("expired")[0] == "gave up retrying"
    assert describe("userunknown")[0] == "invalid address"
    assert describe("no-such-reason") == describe("undefined")
    assert "expired" in REASONS and "undefined" in REASONS and "userunknown" in REASONS


def test_verdict_carries_description() -> None:
    verdict = classify("550 5.1.1 User unknown")
    assert verdict == Verdict("userunknown", True, *describe("userunknown"))


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("421 4.7.0 Try again in 5 minutes", 300),
        ("450 4.2.1 retry in 300 seconds", 300),
        ("451 Please try again later (30s)", 30),
        ("452 Too many messages, try again in 2 hours", 7200),
        ("Greylisted, please try again in 60 seconds", 60),
        ("550 5.1.1 User unknown", None),
        ("", None),
    ],
)
def test_retry_after(text: str, seconds: int | None) -> None:
    assert retry_after(text) == seconds


@pytest.mark.parametrize(
    ("text", "command"),
    [
        ("host mx said: 550 User unknown (in reply to RCPT TO command)", "RCPT"),
        ("SMTP error from remote mail server after MAIL FROM:<a@b.example> SIZE=1:", "MAIL"),
        ("(in reply to end of DATA command)", "DATA"),
        ("SMTP error from remote mail server after initial connection:", "CONN"),
        ("Connected to 192.0.2.1 but my name was rejected.", "HELO"),
        ("550 User unknown", None),
    ],
)
def test_smtp_command(text: str, command: str | None) -> None:
    assert smtp_command(text.lower()) == command


def test_postfix_queue_deferral_is_not_a_suspended_account() -> None:
    text = (
        "delivery temporarily suspended: host mx.example.jp[192.0.2.1] refused to talk to "
        "me: 421 Service not available"
    )
    assert classify(text).reason == "blocked"
    assert classify("550 5.2.1 This mailbox has been suspended").reason == "suspend"


def test_dsn_without_text_falls_back_on_codes() -> None:
    assert classify("", status="4.4.7").reason == "expired"
    assert classify("", status="5.3.4").reason == "mesgtoobig"
    assert classify("", status="5.6.1").reason == "contenterror"
    assert classify("", status="5.7.99").reason == "securityerror"
    assert classify("", reply_code=521).reason == "notaccept"


# Providers' own codes in their replies name the cause more exactly than the status code.
@pytest.mark.parametrize(
    ("text", "reason"),
    [
        # Orange / La Poste: the three digits after OFR / LPN / OUK
        (
            "550 5.5.0 Boite du destinataire archivee. Archived recipient. LPN007_420",
            "suspend",
        ),
        (
            "552 5.1.1 Boite du destinataire pleine. Recipient overquota. OFR_417 [417]",
            "mailboxfull",
        ),
        (
            "421 mwinf5c21 ME Trop de connexions. Too many connections. OFR005_104 [104]",
            "toomanyconn",
        ),
        ("421 4.2.1 Service refuse. Service refused, please try later. LPN007_505", "systemerror"),
        (
            "554 5.7.1 <relay.example.net[198.51.100.9]>: Client host rejected LPN000_630",
            "policyviolation",
        ),
        # Spectrum / Charter: AUP#I (incoming) or AUP#O (outgoing) and a four-digit code
        ("421 4.7.0 Too many connections from your IP. AUP#In-1320", "toomanyconn"),
        ("554 5.7.1 Your IP has no reverse DNS. AUP#I-1120", "requireptr"),
        ("452 4.5.3 Too many recipients in a short time AUP#O-1580", "speeding"),
        # Mimecast's documented refusals
        ("554 Maximum email size exceeded - https://community.mimecast.com/", "mesgtoobig"),
        (
            "550 Anti-Spoofing policy - Inbound not allowed [eu-smtp-1.mimecast.com]",
            "policyviolation",
        ),
        ("554 Email rejected due to security policies - MCSpamSignature.x.1.1", "virusdetected"),
        ("554 Host network not allowed - https://community.mimecast.com/docs/", "policyviolation"),
        ("550 Administrative prohibition envelope blocked", "rejected"),
    ],
)
def test_provider_codes(text: str, reason: str) -> None:
    assert classify(text).reason == reason


def test_yahoo_tss_code_from_yahoos_own_mx_is_a_refusal_of_the_sender() -> None:
    text = (
        "421 4.7.0 [TSS04] Messages from 203.0.113.7 temporarily deferred due to unexpected "
        "volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes"
    )
    from_yahoo = classify(text, command="MAIL", remote_host="mta7.am0.yahoodns.net")
    assert from_yahoo.reason == "rejected"
    assert not from_yahoo.hard
    relayed = "host mta5.am0.yahoodns.net[203.0.113.9] said: 553 5.7.2 [TSS09] All messages "
    relayed += "from 203.0.113.7 will be permanently deferred; Retrying will NOT succeed."
    assert classify(relayed).reason == "rejected"
    # The same words without Yahoo's host: read as the sender's reputation.
    assert classify(text).reason == "badreputation"
