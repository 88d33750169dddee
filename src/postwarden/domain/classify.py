"""The one classifier of delivery failures.

Used for synchronous SMTP replies during delivery and for bounce mails alike. Pure: no I/O.

The reason vocabulary is Sisimai's (see STATUS.md). A verdict is decided by one ordered table,
first match wins:

1. *Decisive* enhanced status codes (RFC 3463 / RFC 5248 registry) whose meaning is specific
   enough that no wording overrides them (5.7.26 DMARC, 5.1.6 moved, x.2.2 mailbox full, ...).
2. Providers' own error codes printed in their replies, which name the cause more exactly than
   the status code beside them (Orange / La Poste "OFR005_505", "LPN000_630"; Spectrum
   "AUP#In-1310"; Mimecast's documented refusals; Yahoo's "[TSS04]" from Yahoo's own MX, known
   from the text or the caller's ``remote_host``): :func:`_provider_reason`.
   Then phrases real servers send (Postfix, Exim, Sendmail, qmail, Exchange/Office 365, Gmail,
   Yahoo, AOL, iCloud, GMX, ...), in the order of :data:`_TEXT_RULES`. Text beats a generic
   code: 5.7.1 is used for everything, Microsoft's 5.4.1 "Access denied" means the user does
   not exist and Gmail's 5.7.1 "email quota exceeded" means the mailbox is full.
   A phrase-based reason is then adjusted by the SMTP command the reply answered (given by the
   caller or read from the text): "User unknown" answering DATA, or with a mailbox/policy code
   rather than an address code, is ``filtered`` (the recipient's filter refused the message);
   anything address-like refused at MAIL FROM is ``rejected`` (the sender was refused); refusals
   at connection or greeting are ``blocked``.
3. The remaining enhanced status codes (:data:`_STATUS_REASON`), then the subject of the code
   (x.6 content, x.7 security), then the bare SMTP reply code.
4. "onhold" when there was a code but nothing matched, "undefined" when there was nothing.

Hardness follows STATUS.md: userunknown, hostunknown and hasmoved are hard; notaccept is hard
unless the failure is temporary (4.x.x, 4xx, or the text says so); every other reason is soft.
Every phrase rule carries a literal "gate" computed at import, so that regular expressions only
run on texts that can match them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache

__all__ = [
    "REASONS",
    "Verdict",
    "classify",
    "describe",
    "extract_reply_code",
    "extract_status",
    "retry_after",
    "smtp_command",
]


@dataclass(frozen=True, slots=True)
class Verdict:
    reason: str
    hard: bool
    group: str
    explanation: str
    next_step: str


# --------------------------------------------------------------------------------------------
# People-facing descriptions: reason -> (group, explanation, next step)
# --------------------------------------------------------------------------------------------
_INVALID = "invalid address"
_MAILBOX = "mailbox problem"
_SPAM = "treated as spam / sender blocked"
_POLICY = "policy or authentication"
_RATE = "rate limited"
_EXPIRED = "gave up retrying"
_REMOTE = "remote or network error"
_UNKNOWN = "could not tell"

_RETRY = "It will be retried; nothing to do unless it keeps failing."
_ALLOW = "Ask the recipient's IT to allowlist the sender, and check the sending IP's reputation."
_AUTH = "Check the sender domain's SPF, DKIM and DMARC records."

_DESCRIPTIONS: dict[str, tuple[str, str, str]] = {
    "userunknown": (
        _INVALID,
        "The address does not exist at the recipient's server.",
        "Correct the address and resend.",
    ),
    "hostunknown": (
        _INVALID,
        "The domain of the address does not exist or has no mail server.",
        "Correct the domain of the address and resend.",
    ),
    "hasmoved": (
        _INVALID,
        "The mailbox has moved and mail is not forwarded to its new address.",
        "Ask the recipient for their new address and resend.",
    ),
    "notaccept": (
        _INVALID,
        "The recipient's domain does not accept any mail (null MX or closed server).",
        "Check the address; if the domain really accepts no mail, remove it.",
    ),
    "mailboxfull": (
        _MAILBOX,
        "The recipient's mailbox is full.",
        "It will be retried; if it stays full, contact the recipient another way.",
    ),
    "suspend": (
        _MAILBOX,
        "The recipient's mailbox is disabled or suspended.",
        "Contact the recipient another way; the mailbox may have been abandoned.",
    ),
    "exceedlimit": (
        _MAILBOX,
        "The message exceeds a limit set for the recipient's mailbox.",
        "Send a smaller message (fewer or smaller attachments) and resend.",
    ),
    "mesgtoobig": (
        _MAILBOX,
        "The message is too large for the recipient's server.",
        "Send a smaller message (fewer or smaller attachments) and resend.",
    ),
    "spamdetected": (
        _SPAM,
        "The recipient's spam filter rejected the message.",
        "Review the content and links; ask the recipient to allowlist the sender.",
    ),
    "blocked": (
        _SPAM,
        "The recipient's server refused the sending server (IP or host blocked or listed).",
        _ALLOW,
    ),
    "badreputation": (
        _SPAM,
        "The recipient's server refused mail because of the sending IP's or domain's reputation.",
        "Check blocklists and sending volume; ask the recipient's IT to allowlist the sender.",
    ),
    "requireptr": (
        _SPAM,
        "The sending server has no valid reverse DNS (PTR) record.",
        "Give the sending IP a PTR record that matches its host name.",
    ),
    "virusdetected": (
        _SPAM,
        "The recipient's server found a virus or a forbidden attachment in the message.",
        "Remove or replace the attachment and resend.",
    ),
    "authfailure": (
        _POLICY,
        "The message failed the recipient's SPF, DKIM or DMARC checks.",
        _AUTH,
    ),
    "filtered": (
        _POLICY,
        "The recipient (or their server) filters out mail like this or from this sender.",
        "Ask the recipient to accept mail from the sender, or contact them another way.",
    ),
    "rejected": (
        _POLICY,
        "The recipient's server refused the sender address (envelope sender).",
        "Check the sender address and its domain; ask the recipient's IT to allowlist it.",
    ),
    "policyviolation": (
        _POLICY,
        "The message breaks a policy of the recipient's organisation.",
        "Review content, attachments and list membership; ask the recipient's IT why.",
    ),
    "securityerror": (
        _POLICY,
        "The recipient's server refused the message for a security or policy reason.",
        _ALLOW,
    ),
    "norelaying": (
        _POLICY,
        "The server refused to relay the message (it is not the recipient's server).",
        "Check the relay configuration and the recipient's domain.",
    ),
    "notcompliantrfc": (
        _POLICY,
        "The message does not follow the mail standards (RFC 5322), e.g. duplicate headers.",
        "Fix the message format (report it to Postwarden's maintainers) and resend.",
    ),
    "contenterror": (
        _POLICY,
        "The recipient's server could not accept the message's format or content.",
        "Check the message's encoding and attachments and resend.",
    ),
    "failedstarttls": (
        _POLICY,
        "An encrypted connection (STARTTLS) to the recipient's server could not be made.",
        "Check the TLS settings of the sending server; it will be retried.",
    ),
    "speeding": (
        _RATE,
        "The recipient's server is limiting how fast it accepts mail from the sender.",
        "It will be retried; send more slowly to this domain.",
    ),
    "toomanyconn": (
        _RATE,
        "The recipient's server refused because of too many connections or recipients.",
        "It will be retried; lower the concurrency to this domain.",
    ),
    "expired": (
        _EXPIRED,
        "Delivery was retried until the time allowed ran out.",
        "Check the address and the recipient's server, then resend if still needed.",
    ),
    "networkerror": (
        _REMOTE,
        "A network or DNS problem prevented delivery (no route, lookup failure, mail loop).",
        _RETRY,
    ),
    "systemerror": (
        _REMOTE,
        "The recipient's server had an internal error or is misconfigured.",
        _RETRY,
    ),
    "systemfull": (
        _REMOTE,
        "The recipient's server is out of disk space.",
        _RETRY,
    ),
    "mailererror": (
        _REMOTE,
        "The program delivering mail on the recipient's server failed.",
        "Ask the recipient's IT to check their delivery program; resend later.",
    ),
    "syntaxerror": (
        _REMOTE,
        "The mail servers did not understand each other (SMTP syntax error).",
        "Report it to the administrator of the sending server; resend later.",
    ),
    "onhold": (
        _UNKNOWN,
        "The recipient's server gave an error that could not be classified.",
        "Read the server's words below; resend if it looks temporary.",
    ),
    "undefined": (
        _UNKNOWN,
        "The recipient's server gave no usable reason.",
        "Read the server's words below; resend if it looks temporary.",
    ),
}

REASONS: tuple[str, ...] = tuple(_DESCRIPTIONS)
_HARD = frozenset({"userunknown", "hostunknown", "hasmoved"})


def describe(reason: str) -> tuple[str, str, str]:
    """(group, explanation, next_step) for a reason name; unknown names are "undefined"."""
    return _DESCRIPTIONS.get(reason, _DESCRIPTIONS["undefined"])


# --------------------------------------------------------------------------------------------
# Codes
# --------------------------------------------------------------------------------------------
# 1. Decisive enhanced codes: their meaning is specific, wording does not override them.
_DECISIVE_STATUS: dict[str, str] = {
    "5.1.6": "hasmoved",
    "4.1.6": "hasmoved",
    "5.7.17": "hasmoved",
    "5.7.18": "hasmoved",
    "5.2.2": "mailboxfull",
    "4.2.2": "mailboxfull",
    "5.2.3": "exceedlimit",
    "4.2.3": "exceedlimit",
    "5.3.4": "mesgtoobig",
    "5.7.16": "mesgtoobig",
    "4.7.16": "mesgtoobig",
    "5.7.13": "suspend",
    "5.7.20": "authfailure",
    "5.7.21": "authfailure",
    "5.7.22": "authfailure",
    "5.7.23": "authfailure",
    "5.7.24": "authfailure",
    "5.7.26": "authfailure",
    "4.7.24": "authfailure",
    "4.7.26": "authfailure",
    "5.7.29": "authfailure",
    "5.7.25": "requireptr",
    "4.7.25": "requireptr",
    "5.7.28": "spamdetected",
    "5.7.30": "failedstarttls",
    "5.7.27": "notaccept",
    "4.3.1": "systemfull",
    "5.3.1": "systemfull",
    "4.4.5": "systemfull",
    "5.1.7": "rejected",
    "5.1.8": "rejected",
    "4.1.7": "rejected",
    "4.1.8": "rejected",
}

# 3. Other enhanced codes (RFC 3463, RFC 5248 registry), used when no phrase matched.
_STATUS_REASON: dict[str, str] = {
    "4.1.7": "rejected",
    "4.1.8": "rejected",
    "4.1.9": "systemerror",
    "4.2.1": "blocked",
    "4.2.4": "filtered",
    "4.3.1": "systemfull",
    "4.3.2": "notaccept",
    "4.3.3": "systemerror",
    "4.3.5": "systemerror",
    "4.4.1": "expired",
    "4.4.2": "networkerror",
    "4.4.3": "systemerror",
    "4.4.4": "networkerror",
    "4.4.5": "systemfull",
    "4.4.6": "networkerror",
    "4.4.7": "expired",
    "4.4.8": "networkerror",
    "4.5.3": "systemerror",
    "4.5.5": "systemerror",
    "4.6.0": "contenterror",
    "4.6.2": "contenterror",
    "4.6.5": "contenterror",
    "4.7.1": "blocked",
    "4.7.2": "blocked",
    "4.7.5": "securityerror",
    "4.7.6": "securityerror",
    "4.7.7": "securityerror",
    "4.7.12": "securityerror",
    "4.7.15": "securityerror",
    "5.1.0": "userunknown",
    "5.1.1": "userunknown",
    "5.1.2": "hostunknown",
    "5.1.3": "userunknown",
    "5.1.4": "filtered",
    "5.1.7": "rejected",
    "5.1.8": "rejected",
    "5.1.9": "systemerror",
    "5.1.10": "userunknown",
    "5.2.0": "filtered",
    "5.2.1": "filtered",
    "5.2.4": "filtered",
    "5.3.0": "systemerror",
    "5.3.1": "systemfull",
    "5.3.2": "notaccept",
    "5.3.3": "systemerror",
    "5.3.5": "systemerror",
    "5.4.0": "networkerror",
    "5.4.1": "userunknown",
    "5.4.3": "systemerror",
    "5.4.4": "hostunknown",
    "5.4.6": "networkerror",
    "5.4.7": "expired",
    "5.5.2": "syntaxerror",
    "5.5.3": "toomanyconn",
    "5.5.4": "systemerror",
    "5.5.5": "systemerror",
    "5.5.6": "syntaxerror",
    "5.6.0": "contenterror",
    "5.6.1": "contenterror",
    "5.6.2": "contenterror",
    "5.6.3": "contenterror",
    "5.6.5": "contenterror",
    "5.6.6": "contenterror",
    "5.6.7": "contenterror",
    "5.6.8": "contenterror",
    "5.6.9": "contenterror",
    "5.7.0": "securityerror",
    "5.7.1": "securityerror",
    "5.7.2": "securityerror",
    "5.7.3": "securityerror",
    "5.7.4": "securityerror",
    "5.7.5": "securityerror",
    "5.7.6": "securityerror",
    "5.7.7": "securityerror",
    "5.7.8": "securityerror",
    "5.7.9": "securityerror",
    "5.7.10": "securityerror",
    "5.7.11": "securityerror",
    "5.7.14": "securityerror",
    "5.7.15": "securityerror",
    "5.7.19": "securityerror",
    # Microsoft 365 specific detail codes
    "5.7.509": "authfailure",
    "5.7.510": "securityerror",
    "5.7.511": "blocked",
    "5.7.606": "blocked",
    "5.7.607": "blocked",
    "5.7.608": "blocked",
    "4.7.650": "badreputation",
    "4.7.651": "badreputation",
    "4.7.652": "badreputation",
    "5.1.351": "userunknown",
    "5.4.312": "networkerror",
    "5.4.316": "networkerror",
    "5.7.708": "badreputation",
    "5.7.750": "blocked",
}

# 4. Bare SMTP reply codes (RFC 5321) when there is no enhanced code and no phrase matched.
_REPLY_REASON: dict[int, str] = {
    421: "blocked",
    452: "systemfull",
    521: "notaccept",
    556: "notaccept",
    525: "suspend",
    500: "syntaxerror",
    501: "syntaxerror",
    502: "syntaxerror",
    503: "syntaxerror",
    504: "syntaxerror",
    550: "onhold",
    551: "hasmoved",
    552: "mailboxfull",
    553: "userunknown",
    554: "onhold",
}

# --------------------------------------------------------------------------------------------
# 2. Phrases. Ordered; first match wins. Each entry: (reason, [regular expressions]).
#    Matched against the lowercased text with runs of white space collapsed to one space.
# --------------------------------------------------------------------------------------------
_TEXT_RULES: list[tuple[str, list[str]]] = [
    # ---- the local delivery program failed (pipe, procmail, ...) ------------------------
    (
        "mailererror",
        [
            r"procmail: |maildrop: |mail\.local: |command died with status|pipe to \|",
            r"unknown mailer error|mailer error",
        ],
    ),
    # ---- mailbox full ---------------------------------------------------------------------
    (
        "mailboxfull",
        [
            r"mailbox (?:is )?full|full mailbox|mailbox (?:size )?limit exceeded",
            r"mail ?(?:box|folder|drop) (?:is |has )?(?:full|over ?quota|exceeded)",
            r"over ?quota|overquota|quota ?(?:is )?(?:exceeded|full|violation)",  # QuotaExceeded
            r"exceed(?:s|ed)? (?:the |their |his |her |its "
            r"|your )?(?:storage|disk|mailbox)? ?quota",
            r"email quota exceeded|mailbox quota|maildir quota|disk quota|quota for",
            r"exceeded (?:their |the )?storage allocation",
            r"mailbox (?:would )?exceed(?:s|ed)? (?:the )?(?:maximum |allowed )",
            r"out of storage space|insufficient (?:disk|storage) space",
            r"not (?:sufficient|enough) disk",
            r"no space left on device|user'?s space has been used up",
            r"user has too many messages on the server|too much mail data",
            r"boite du destinataire pleine|mailbox is over its size",
            r"account is (?:over|full|out of)|mailbox has exceeded",
            r"exceeded the (?:size|storage) limit|has exceeded (?:his|her|their) (?:storage|quota)",
            r"receiving limits",
        ],
    ),
    # ---- message size ---------------------------------------------------------------------
    (
        "exceedlimit",
        [
            r"message length exceeds administrative limit",
            r"exceeds? (?:the )?(?:per-?)?mailbox (?:size )?limit",
        ],
    ),
    (
        "mesgtoobig",
        [
            r"message (?:file )?too (?:big|large)|mail too large|size exceeds|exceeds? size limit",
            r"exceeded (?:the )?maximum (?:inbound |incoming )?message size",
            r"message size exceeds|max(?:imum)? message size exceeded|size limit",
            r"line limit exceeded|taille limite du message atteinte",
            r"message is larger than|too large for (?:this|the) ",
        ],
    ),
    # ---- moved ----------------------------------------------------------------------------
    (
        "hasmoved",
        [
            r" has been replaced by ",
            r"mailbox has moved",
            r"address has moved",
        ],
    ),
    # ---- suspended / disabled ---------------------------------------------------------------
    (
        "suspend",
        [
            r"(?<!delivery )(?:is|has been|currently|temporarily) "
            r"(?:suspended|disabled|deactivated|"
            r"frozen|locked)",
            r"recipient account is blocked|compte du destinataire est bloque",
            r"account (?:has been |is )?(?:disabled|suspended|inactive|locked|deactivated|expired)",
            r"mailbox (?:is )?(?:disabled|suspended|inactive|frozen|currently suspended)",
            r"inactive (?:account|user|mailbox)|invalid/inactive user|user (?:is )?suspended",
            r"email account that you tried to reach is (?:disabled|inactive)",
            r"archived recipient|boite du destinataire archivee|is a deactivated mailbox",
            r"user is terminated|recipient suspend the service|temporarily inactive",
            r"this account has been disabled or discontinued|user or domain is disabled",
            r"mailbox unavailable or access denied|account is locked|temporary locked",
            r"this address no longer accepts mail",
        ],
    ),
    # ---- relaying -------------------------------------------------------------------------
    (
        "norelaying",
        [
            r"relay(?:ing)? (?:access )?(?:denied|not permitted|prohibited|not allowed)",
            r"unable to relay|we do not relay|no relaying|not allowed to relay",
            r"not permitted to relay|as a relay|not an open relay|relaying mail to ",
            r"email address is not verified",
            r"this system is not configured to relay|not a gateway|we don't handle mail for",
            r"that domain isn't in my list of allowed rcpthost",
            r"requires authentication when attempting to send to a non-local",
            r"specified domain is not allowed",
        ],
    ),
    # ---- unambiguous verdicts: failed authentication, spam, IP blocks (before wider wording) -
    (
        "authfailure",
        [
            r"does not have authentication information|fails to pass authentication checks",
            r"due to (?:the )?domain's dmarc policy|multiple authentication checks failed",
        ],
    ),
    (
        "spamdetected",
        [
            r"rejected due to spam (?:classification|content)|classified as spam|detected as spam",
        ],
    ),
    (
        "blocked",
        [
            r"client host (?:\[\S+\] )?blocked|blocked using |adresse ip source bloquee",
            r"blacklisted by |(?:ip|host) (?:address )?(?:\S+ )?(?:is )?(?:blocked|blacklisted)",
        ],
    ),
    # ---- SPF / DKIM / DMARC -----------------------------------------------------------------
    (
        "authfailure",
        [
            r"\bdmarc\b|\bspf\b|\bdkim\b|sender policy framework",
            r"doesn't meet the required authentication level",
            r"5322\.from address doesn't meet the authentication requirements",
            r"domain authentication fail|not allowed to send from <",
            r"is not allowed to send mail\..{0,40}_401",
        ],
    ),
    # ---- reverse DNS --------------------------------------------------------------------------
    (
        "requireptr",
        [
            r"reverse (?:dns|lookup|hostname)|\bptr\b|rdns",
            r"cannot find your hostname|cannot resolve your (?:address|hostname)",
            r"ip name lookup failed|unresolvable relay host name|generic dns",
            r"forward dns entry does not point to the sending ip",
            r"mismatches client ip|unverifyable sending ips|unverifiable sending ips",
            r"dns lookup failure: .{0,80}try again later",
            r"client host rejected: (?:cannot|can't) find your",
        ],
    ),
    # ---- address does not exist (checked before "blocked"/"rejected" wording) ----------------
    (
        "userunknown",
        [
            r"user ?unknown|unknown (?:user|recipient|mailbox|local ?part|e-?mail address|address)",
            r"no such (?:user|mailbox|recipient|person|address|local user|account)",
            r"(?:user|recipient|mailbox|address|account|addressee) "
            r"(?:does not|doesn't|not) exists?",
            r"(?:user|recipient|mailbox|address|account) (?:was )?not found",
            r"(?:user|recipient|mailbox|address) (?:is )?(?:invalid|not valid|unknown|not known)",
            r"invalid (?:recipient|mailbox|address|user)|bad recipient|badrcptto",
            r"not a valid (?:mailbox|recipient|user)|is not a known user",
            r"(?:email )?address (?:does not exist|could not be found)|address unknown",
            r"the email account that you tried to reach does not exist",
            r"recipient address rejected: (?:access denied|unknown|invalid|user|undeliverable)",
            r"recipient (?:not ok|is not accepted|is not local|rejected)|recipientnotfound",
            r"resolver\.adr\.recip\w*notfound|recipient ?not ?found",
            r"mailbox (?:unavailable|not present|invalid|not available|unavaiable)",
            r"no mailbox (?:here|by that name|found|available)|no account by that name",
            r"no (?:one|mail ?box) (?:at|for) this (?:address|user)",
            r"this user doesn't have a .{1,40} account|no valid recipients",
            r"non-?existent (?:user|mailbox|address|recipient)|nonexistent",
            r"sorry, no mailbox|account unavailable|recipient name is not recognized",
            r"recipient address rejected(?:\.|$| \(in reply)",
            r"address (?:is )?(?:invalid|inactive|no longer valid)|wrong or no longer valid",
            r"is not an active address|not (?:our|a local) (?:user|customer|address)",
            r"does not exist at the organization",
            r"not listed in (?:the )?(?:\w+ )?(?:directory|address "
            r"book|name & address book|public)",
            r"in my badrecipientto list|not in my validrcptto list",
            r"destination addresses were unknown|destination server rejected recipients",
            r"user (?:\S+ )?(?:not exist|does not exist|not active|missing home directory)",
            r"utilisateur inconnu|no existe (?:dicha persona|ese usuario)",
            r"nessun utente simile|adresse d au moins un destinataire invalide",
            r"please check if (?:the )?address is correct",
            r"weil die adresse nicht gefunden wurde|unbekannt",
            r"invalid or unknown virtual user|rcpt \S+ does not exist",
            r"there is no one at this address",
            r"the user'?s email name is not found",
            r"not email addresses|this spectator does not exist",
            r"your envelope recipient (?:has been denied|is in my badrcptto)",
            r"the following recipients was undeliverable|address not present in directory",
            r"can't accept user|is not a valid user|not a valid recipient",
            r"the address couldn't be found",
            r"invalid (?:final delivery )?userid|invalid user address",
        ],
    ),
    # ---- filtered by the recipient's own rules ------------------------------------------------
    (
        "filtered",
        [
            r"message rejected due to user rules|user refuses to receive|user reject",
            r"refused due to recipient preferences|you have been blocked by the recipient",
            r"only accepting mail from specific email addresses|account is protected by",
            r"recipient id refuse to receive mail|has restricted sms e-?mail",
            r"is not accepting any mail|bounced address|not found recipient account",
            r"message filtered",
        ],
    ),
    # ---- RFC compliance ---------------------------------------------------------------------
    (
        "notcompliantrfc",
        [
            r"not rfc ?5322 compliant|rfcmessagenoncompliant|duplicate header",
            r"multiple addresses in (?:the )?from",
            r" multiple .{1,40} headers?\b",
        ],
    ),
    # ---- reputation -------------------------------------------------------------------------
    (
        "badreputation",
        [
            r"reputation",
            r"temporarily deferred due to unexpected volume or user complaints",
        ],
    ),
    # ---- virus --------------------------------------------------------------------------------
    (
        "virusdetected",
        [
            r"virus|malware|infected|executable files are not allowed",
            r"banned attachment|dangerous attachment|forbidden attachment",
        ],
    ),
    # ---- spam ---------------------------------------------------------------------------------
    (
        "spamdetected",
        [
            r"\bspam(?!haus|cop)|unsolicited|bulk (?:e-?)?mail|junk mail|junkmail",
            r"content filter rejection|message content rejected|rejecting (?:banned|mail) content",
            r"blacklisted url|uribl|surbl|mail content denied|message filtered",
            r"message rejected because of unacceptable content",
            r"recurrent pattern detection|reject bulk\.advertising|spambouncer",
            r"our system has detected that this message is|message looks like",
            r"mail score \(.{0,20} over |this message scored .{0,20} points",
            r"your message has been temporarily blocked by our filter",
            r"message rejected for policy reasons|high probability of|probable spam",
            r"mail rejete\. mail rejected\.",
        ],
    ),
    # ---- sender address refused -------------------------------------------------------------
    (
        "rejected",
        [
            r"sender (?:address |email address )?(?:rejected|denied|was rejected|blacklisted)",
            r"sender (?:is|address has been) (?:spammer|in my black ?list|blacklisted)",
            r"(?:invalid|bad|unknown|unroutable|unverified) sender|sender verify failed",
            r"sender not pre-?approved|sender domain is empty|domain of sender address ",
            r"address rejected: (?:domain|sender)|sender address rejected",
            r"access denied \((?:in reply to mail from|sender blacklisted)",
            r"administrative prohibition|batv|null sender is not allowed",
            r"empty envelope senders not allowed|bogus mail from|no third-party dsns",
            r"returned mail not accepted here|unsigned dsn for",
            r"mail from not owned by user|not a registered gateway user",
            r"emetteur invalide",
            r"you are not allowed to post to this mailing list|not subscribed to this group",
            r"this server does not accept mail from|envelope blocked",
            r"can't determine purported responsible address",
            r"fully qualified email address required|from: domain is invalid",
            r"your email address has been blacklisted|an address that has been blacklisted",
            r"not on the recipient's list of senders|spam reporting address",
            r"sending this from a different address or alias",
            r"connections not accepted from servers without a valid sender domain",
            r"denied \[bouncedeny\]|valid-address-filter|delivery not authorized, message refused",
            r"rule imposed mailbox access for",
            r"groups\.google\.com/support|the group you tried to contact|permission to post",
        ],
    ),
    # ---- domain publishes no mail service (null MX), DNS failures ------------------------
    (
        "notaccept",
        [
            r"does(?:n't| not) (?:accept|receive) (?:any )?(?:e-?)?mail|null ?mx|nullmx",
            r"no mx (?:record )?found for domain|indicated no smtp service",
            r"couldn't find a mail exchanger",
        ],
    ),
    ("hostunknown", [r"dns lookup failure: host \S+ not found"]),
    (
        "networkerror",
        [
            r"dns error: .{0,80}nxdomain|host not found, try again",
            r"network error on destination|dns query failed|host name lookup failure",
        ],
    ),
    # ---- domain does not exist --------------------------------------------------------------
    (
        "hostunknown",
        [
            r"host (?:or domain name )?(?:unknown|not found)|unknown host",
            r"domain (?:does not exist|is not reachable|must exist|not found|unknown)",
            r"no such domain|unknown domain|name or service not known|domain name not found",
            r"mail domain mentioned in email address is unknown",
            r"the account or domain may not exist",
            r"couldn't find any host named|no (?:mx|mail exchanger|mail server) (?:record )?for",
            r"553 .{1,80} does not exist|invalid domain|nxdomain|no valid mx",
            r"host unreachable|unrouteable address|unroutable address",
        ],
    ),
    # ---- rate limits --------------------------------------------------------------------------
    (
        "speeding",
        [
            r"rate limited|please try again slower|sent to too many recipients",
            r"sending (?:too fast|at a rate)|receiving mail (?:at a rate|too quickly)",
            r"too many (?:messages|emails|mails) (?:from|in|per)",
        ],
    ),
    (
        "toomanyconn",
        [
            r"too many (?:connections|concurrent|smtp sessions|errors from your ip|recipients)",
            r"connection rate limit|maximum connection limit|per-domain connection limit",
            r"max emails per hour|throttl|trop de connexions|frequency limited",
            r"we have already made numerous attempts",
        ],
    ),
    # ---- client IP / host blocked -----------------------------------------------------------
    (
        "blocked",
        [
            r"blacklist|black list|blocklist|block list|\bdnsbl\b|\brbl\b|spamhaus|spamcop",
            r"barracudacentral|abuseat\.org|sorbs|listed (?:at|in|on) ",
            r"blocked (?:using|by|- see|for abuse)|was blocked by|is blocked",
            r"(?:client|sender|sending) (?:host|ip)(?: address)? (?:rejected|blocked|refused)",
            r"(?:your|the) (?:ip|host|server|network)(?: "
            r"address)? .{0,40}(?:blocked|rejected|denied)",
            r"access (?:from|denied).{0,30}ip|banned sending ip|bad sender ip",
            r"not (?:currently )?accepting (?:mail|connections) from (?:your|this) ",
            r"dynamic(?:/zombied)? ip|dynamic ips|hosts with dynamic ip|residential ip",
            r"please use the smtp server of your isp|helo command rejected",
            r"refused to talk to me|you are not allowed to connect|go away",
            r"connection (?:refused|reset|dropped|was dropped)",
            r"not accepting connections|service refused, please try later",
            r"may not be mail exchanger|was not authenticated|your server requires confirmation",
            r"confirm this mail server|rejecting open proxy|suspiciously like spammer",
            r"part of their network is on our block list|currently sending spam",
            r"no access from mail server|sender ip address rejected",
            r"invalid ip for sending mail|not allowed to send mail from",
            r"too many unwanted messages have been sent from|you are sending spam",
            r"mail from .{1,60} refused|message from .{1,60} rejected based on",
            r"\babus detecte",
        ],
    ),
    # ---- policy -----------------------------------------------------------------------------
    (
        "policyviolation",
        [
            r"(?:local |organi[sz]ational )policy|policy (?:reasons|rejection)|denied by policy",
            r"violat(?:es|ion of) .{0,20}polic",
            r"by organi[sz]ation(?:al)? (?:policy|settings)|local policy",
            r"illegal attachment|members-only list|closed mailing list|header error",
            r"header are not accepted|message given low priority|messages with multiple addresses",
            r"protocol violation|not accepting mail with |mass mailer|without solving a captcha",
            r"do not accept messages containing images|presents a potential",
            r"security polic",
        ],
    ),
    # ---- security ---------------------------------------------------------------------------
    (
        "securityerror",
        [
            r"authentication (?:required|failure|credentials invalid|turned on)",
            r"authentication failed; server .{1,80} said",
            r"unauthenticated senders not allowed|insecure mail relay|verification failure",
            r"not authorized to (?:send|perform ses)|account not subscribed to ses",
            r"you don't authenticate|authentification (?:invalide|requise)|smtp authentication",
            r"domain .{1,60} is a dead domain",
        ],
    ),
    # ---- TLS ----------------------------------------------------------------------------------
    (
        "failedstarttls",
        [
            r"starttls (?:is )?(?:failed|failure|required|error|negotiation)|must issue a starttls",
            r"\btls\b.{0,40}(?:required|fail|handshake|negotiat)|ssl handshake|failed starttls",
            r"requiretls",
        ],
    ),
    # ---- remote system ----------------------------------------------------------------------
    (
        "systemfull",
        [
            r"mail system full|system (?:disk )?full|insufficient system storage",
            r"not enough space on the disk|disk (?:is )?full",
        ],
    ),
    (
        "networkerror",
        [
            r"(?:unable|wasn't able|not able) to establish an smtp connection",
            r"mail (?:forwarding )?loop|routing loop",
            r"message looping|too many hops|hop count exceeded",
            r"maximum forwarding loop count exceeded|loops back to myself",
            r"host name lookup failure|host not found, try again|name server reply",
            r"no route to host|host is unreachable|unable to resolve route",
            r"dns records for the destination computer could not be found",
            r"could not connect and send the mail to|unrouteable mail domain",
            r"temporary (?:dns|lookup) failure|dns (?:lookup |query )?(?:error|failure|timeout)",
            r"network (?:is )?unreachable",
        ],
    ),
    # a specific local failure beats the "given up after retries" wording that follows it
    ("systemerror", [r"unable to contact ldap server|local configuration error"]),
    # ---- delivery given up after retries --------------------------------------------------
    (
        "expired",
        [
            r"retry time(?:out)? (?:not reached|exceeded)",
            r"retry timeout exceeded",
            r"this message has been in the queue too long",
            r"message (?:expired|timed out|was not delivered within)",
            r"delivery (?:time )?expired",
            r"could not be delivered (?:for|within) (?:more than )?\d+ (?:days|hours)",
            r"your message could not be delivered for more than",
            r"was not reachable within the allowed queue period",
            r"have been failing for a long time",
            r"unable to deliver message after multiple retries",
            r"giving up on (?:it|delivery|this message)",
            r"i'm not going to try again",
            r"delivery attempts will continue to be made",
            r"it has not been collected after",
            r"message expired after sitting in queue",
            r"has been delayed|delivery (?:is |has been )?delayed|delayed delivery",
            r"warning: message .{0,40}still undelivered after",
            r"could not deliver .{0,40}within \d+ (?:days|hours)",
            r"deferred for too long|too old|envelope expired",
            r"could not deliver for the last \d+ (?:seconds|minutes|hours|days)",
            r"did not accept our requests to connect|delivery failed \d+ attempts",
            r"will be retried for \d+ more|host not reachable",
        ],
    ),
    (
        "systemerror",
        [
            r"(?:local|system|server|mail system) (?:config(?:uration)? )?error",
            r"local error in processing|temporary local problem|internal (?:server )?error",
            r"aliasing/forwarding loop broken|can't create user output file",
            r"could not load drd|interrupted system call|queue file write error",
            r"it would create a mail loop|loop was found in the mail exchanger",
            r"recipient deferred because there is no mdb|remote server is misconfigured",
            r"service (?:currently |temporarily )?unavailable|timeout waiting for input",
            r"it encountered an error while being processed|transaction failed\b",
            r"unable to connect .{0,40}daemon|system (?:is )?(?:busy|overloaded)",
            r"unable to contact ldap server",
        ],
    ),
    (
        "notaccept",
        [
            r"does not accept mail|host/domain does not accept|null ?mx|nullmx",
            r"mail receiving disabled|no route for current request",
            r"smtp protocol returned a permanent error|no mx record found for domain",
            r"name server: \.: host not found",
        ],
    ),
    (
        "contenterror",
        [
            r"content (?:error|rejected)|improper (?:use of )?8-?bit|invalid (?:mime|header)",
            r"message header|malformed (?:message|mime|header)|8bitmime",
        ],
    ),
    (
        "mailererror",
        [
            r"x-unix|mailer error|pipe to |unknown mailer|command (?:died|failed|output)",
            r"exit (?:code|status) \d|procmail|maildrop",
        ],
    ),
    (
        "syntaxerror",
        [
            r"syntax error|command unrecognized|unrecognized command|bad sequence of commands",
            r"improper sequence of commands|command (?:parameter )?not implemented",
        ],
    ),
    (
        "expired",
        [
            r"connection timed out|timed out while|server did not respond|no answer from host",
            r"could not find a gateway for|failed to deliver to domain ",
        ],
    ),
]


def _seq_runs(seq: list, sre: object) -> list[str] | None:
    """Literals one of which must occur wherever the parsed sequence matches."""
    best, current, nested = "", "", None
    for op, arg in seq:
        if op is sre.LITERAL:
            current += chr(arg)
            continue
        best, current = max(best, current, key=len), ""
        sub = None
        if op is sre.BRANCH:
            branch_runs: list[str] | None = []
            for branch in arg[1]:
                runs = _seq_runs(list(branch), sre)
                if runs is None:
                    branch_runs = None
                    break
                branch_runs.extend(runs)
            if branch_runs and (
                nested is None or min(map(len, branch_runs)) > min(map(len, nested))
            ):
                nested = branch_runs
        elif op is sre.SUBPATTERN:
            sub = arg[-1]
        elif op in (sre.MAX_REPEAT, sre.MIN_REPEAT) and arg[0] >= 1:
            sub = arg[2]
        if sub is not None:
            runs = _pattern_runs(sub, sre)
            if runs is not None and (nested is None or min(map(len, runs)) > min(map(len, nested))):
                nested = runs
    best = max(best, current, key=len)
    return [best] if len(best) >= 3 else nested


def _pattern_runs(sub: object, sre: object) -> list[str] | None:
    items = list(sub)
    if len(items) == 1 and items[0][0] is sre.BRANCH:
        out: list[str] = []
        for branch in items[0][1][1]:
            runs = _seq_runs(list(branch), sre)
            if runs is None:
                return None
            out.extend(runs)
        return out
    return _seq_runs(items, sre)


def _literal_runs(pattern: str) -> list[str] | None:
    """Literal strings one of which must occur in any text the pattern matches, or None when
    that cannot be told (then the pattern is always tried)."""
    from re import _parser as sre  # the stdlib's own regex parser, used once at import

    return _pattern_runs(sre.parse(pattern), sre)


_Gate = tuple[str, ...] | None
_Entry = tuple[re.Pattern[str], _Gate]


def _gate(runs: list[str] | None) -> _Gate:
    if runs is None:
        return None
    # Drop literals that contain another literal of the same gate: the shorter one is present
    # whenever the longer one is, so checking the longer one is wasted work.
    lits = sorted(set(runs), key=len)
    kept: list[str] = []
    for lit in lits:
        if not any(k in lit for k in kept):
            kept.append(lit)
    return tuple(kept)


def _compile_rule(patterns: list[str]) -> tuple[_Gate, tuple[_Entry, ...]]:
    """One rule: a gate over all its patterns, and each pattern with its own gate."""
    entries = tuple((re.compile(p), _gate(_literal_runs(p))) for p in patterns)
    union: list[str] | None = []
    for _, gate in entries:
        if gate is None or union is None:
            union = None
        else:
            union.extend(gate)
    return _gate(union), entries


# (reason, gate, patterns): a pattern's regex only runs when the text contains one of the
# literals it cannot match without (None: always runs). This keeps classification fast on long
# bounce texts; the result is the same as trying every regex.
_COMPILED_RULES: tuple[tuple[str, _Gate, tuple[_Entry, ...]], ...] = tuple(
    (reason, *_compile_rule(patterns)) for reason, patterns in _TEXT_RULES
)

_STATUS_RE = re.compile(r"(?<![\w.])([245])\.(\d{1,3})\.(\d{1,3})(?!\.?\d)")
_REPLY_RE = re.compile(r"(?<![\w.\-/])([245][0-5]\d)(?:[ \-:,]|$)")
_SPACE_RE = re.compile(r"\s+")
_TEMPORARY_RE = re.compile(r"temporar|try again later|please try again")


def extract_status(text: str) -> str | None:
    """The first failure enhanced status code ("5.1.1") in a text (a 2.x.x success code of a
    transcript only when there is no other), if any."""
    first = None
    for m in _STATUS_RE.finditer(text):
        code = f"{m.group(1)}.{int(m.group(2))}.{int(m.group(3))}"
        if code[0] != "2":
            return code
        first = first or code
    return first


def extract_reply_code(text: str) -> int | None:
    """The first failure SMTP reply code (550 etc.) in a text (a 2xx only if no other)."""
    first = None
    for m in _REPLY_RE.finditer(text):
        code = int(m.group(1))
        if code >= 400:
            return code
        first = first or code
    return first


def _normalise_status(status: str | None) -> str | None:
    if not status:
        return None
    m = _STATUS_RE.search(status)
    return f"{m.group(1)}.{int(m.group(2))}.{int(m.group(3))}" if m else None


@cache  # one Verdict per outcome: they are immutable
def _verdict(reason: str, temporary: bool) -> Verdict:
    group, explanation, next_step = describe(reason)
    hard = reason in _HARD or (reason == "notaccept" and not temporary)
    return Verdict(reason, hard, group, explanation, next_step)


_COMMAND_RE = re.compile(
    r"(?:in reply to|after|while sending|did not like our|>>>|smtp command:?|response to|"
    r"most progress was|rejected at|during|command|smtp:)\s*(?:the\s+)?(?:end of\s+)?"
    r"(rcpt|mail|data|final data|ehlo|helo|body|message|initial connection|greeting|banner)\b"
)
_COMMAND_NAME = {
    "rcpt": "RCPT",
    "mail": "MAIL",
    "data": "DATA",
    "final data": "DATA",
    "body": "DATA",
    "message": "DATA",
    "ehlo": "HELO",
    "helo": "HELO",
    "initial connection": "CONN",
    "greeting": "CONN",
    "banner": "CONN",
}
_RCPT_FIELD_RE = re.compile(r"(?:^|\s)rcpt to: ?<?[^\s<>@]+@")
_QMAIL_COMMAND_RE = re.compile(
    r"but (?:my name|sender|recipient) was rejected|does not like recipient|\[rcpt_to\]"
)
_QMAIL_COMMAND = {"my name": "HELO", "sender": "MAIL", "recipient": "RCPT", "rcpt_to": "RCPT"}


def smtp_command(text: str) -> str | None:
    """The SMTP command a (lowercased) diagnostic says the error answered: RCPT, MAIL, DATA,
    HELO, or None."""
    m = _COMMAND_RE.search(text)
    if m:
        return _COMMAND_NAME[m.group(1)]
    if _RCPT_FIELD_RE.search(text):  # "RCPT TO: addr" quoted as the failed command
        return "RCPT"
    m = _QMAIL_COMMAND_RE.search(text)
    if m:
        for key, name in _QMAIL_COMMAND.items():
            if key in m.group(0):
                return name
    return None


def _refine(
    reason: str, text: str, status: str | None, command: str | None, reply_code: int | None
) -> str:
    """Adjust a phrase-based reason with the SMTP command and a generic status code."""
    if reason == "userunknown" and command != "RCPT" and not _RCPT_TIME_RE.search(text):
        # "User unknown" after the message was sent (DATA) or with a mailbox-status/policy code:
        # the recipient's filter refused it, the address itself exists.
        subject = status[2:] if status else ""
        if subject.startswith(("1.", "5.", "4.")):
            return reason
        # Without any code or command: a remote server's bare "550 User unknown" is read as a
        # content filter (Sisimai's rule), while an MTA's own words about its local users
        # (no reply code: "Unknown user: x", "The recipient name is not recognized") are not.
        if (
            command == "DATA"
            or subject.startswith(("2.", "7.", "0.", "3."))
            or (not subject and reply_code is not None and reply_code >= 500)
        ):
            return "filtered"
    return reason


# Replies only ever sent in answer to RCPT TO: the address itself is unknown.
_RCPT_TIME_RE = re.compile(
    r"recipient address rejected: access denied|dd this user doesn't have|>: user unknown|"
    r"the address couldn't be found|"
    r"resolver\.adr\.|recipientnotfound|access denied"
)


# --------------------------------------------------------------------------------------------
# Providers' own error codes, printed in their replies. Each one names its cause more exactly
# than the enhanced status code that comes with it (Orange and La Poste send "421 4.2.0 ...
# OFR005_505" and "554 5.7.1 ... LPN000_630"; Spectrum/Charter "550 5.1.0 ... AUP#In-1310").
# --------------------------------------------------------------------------------------------
# Orange / Wanadoo / La Poste: "OFR004_405", "LPN105_104", "OFR_417", "LPN416", "OUK_513".
_ORANGE_RE = re.compile(r"\b(?:lpn|ofr|ouk)(?:[a-z]{3})?(?:\d{3})?[_-]?(\d{3})\b")
_ORANGE_CODES: dict[str, str] = {
    "100": "blocked",  # sending IP listed on an RBL
    "101": "blocked",
    "102": "blocked",  # "Client host blocked for spamming issues"
    "103": "blocked",  # IP blacklisted by Orange
    "104": "toomanyconn",  # "Too many connections, slow down"
    "107": "requireptr",  # no PTR record for the sending IP
    "109": "toomanyconn",  # too many messages per connection
    "201": "blocked",  # invalid HELO/EHLO
    "305": "securityerror",  # "Code d'authentification invalide"
    "401": "authfailure",  # "SPF: ... is not allowed to send mail"
    "402": "securityerror",  # "Authentification requise"
    "403": "rejected",  # "Emetteur invalide. Invalid Sender."
    "405": "rejected",
    "415": "rejected",
    "416": "userunknown",  # "Adresse d au moins un destinataire invalide"
    "417": "mailboxfull",  # "Boite du destinataire pleine. Recipient overquota."
    "418": "userunknown",
    "420": "suspend",  # "Boite du destinataire archivee"
    "421": "rejected",  # "Mail from not owned by user"
    "425": "rejected",  # sender domain blacklisted
    "426": "suspend",  # "Le compte du destinataire est bloque"
    "505": "systemerror",  # "Service refuse. Veuillez essayer plus tard." (end of DATA)
    "506": "spamdetected",  # "Mail rejete. Mail rejected."
    "510": "blocked",
    "514": "mesgtoobig",  # "Taille limite du message atteinte"
    "515": "authfailure",  # DMARC
    "517": "authfailure",
    "519": "authfailure",
    "630": "policyviolation",  # "Client host rejected" by policy
    "999": "blocked",  # rate limited for bad behaviour
}
# Spectrum / Charter: "AUP#In-1310", "AUP#O-1000": ranges of four-digit codes.
_SPECTRUM_RE = re.compile(r"aup#[a-z\-]*(\d{4})")
_SPECTRUM_CODES: tuple[tuple[int, int, str], ...] = (
    (1000, 1000, "blocked"),  # IP blocked for suspicious activity
    (1010, 1080, "rejected"),  # the sending account is blocked or limited
    (1090, 1090, "systemerror"),
    (1100, 1150, "requireptr"),  # no full-circle reverse DNS
    (1160, 1190, "policyviolation"),
    (1200, 1250, "blocked"),  # Cloudmark / Spamhaus listings
    (1260, 1260, "networkerror"),  # IPv6 not accepted
    (1300, 1340, "toomanyconn"),  # concurrent / total connection limits
    (1350, 1490, "speeding"),
    (1500, 1520, "rejected"),  # sending as another address or domain
    (1530, 1530, "mesgtoobig"),
    (1540, 1550, "speeding"),
    (1560, 1560, "policyviolation"),  # too many invalid recipients
    (1580, 1580, "speeding"),
)
# Yahoo's bracketed codes: "[TSS04] ... temporarily deferred due to unexpected volume or user
# complaints" answered by Yahoo's own MX (*.yahoodns.net) at MAIL FROM is its refusal of the
# sender ("rejected"); the same words relayed without Yahoo's host are read as reputation.
_YAHOO_TSS_RE = re.compile(r"\[tss(?:0[49]|1[01])\]|will be permanently deferred")
_YAHOO_HOST_RE = re.compile(r"yahoodns\.net\b")

# Mimecast's documented refusals (its "SMTP Error Codes" page): the words are its own.
_MIMECAST_PHRASES: tuple[tuple[str, str], ...] = (
    ("spf sender invalid - envelope rejected", "authfailure"),
    ("dkim sender invalid - envelope rejected", "authfailure"),
    ("dmarc sender invalid - envelope rejected", "authfailure"),
    ("local ct ip reputation", "badreputation"),
    ("ip temporarily blacklisted", "blocked"),
    ("maximum email size exceeded", "mesgtoobig"),
    ("account inbounds disabled", "notaccept"),
    ("anti-spoofing policy", "policyviolation"),
    ("due to content examination policy", "policyviolation"),
    ("host network not allowed", "policyviolation"),  # geographical restriction policy
    ("administrative prohibition envelope blocked", "rejected"),
    ("envelope blocked - user", "rejected"),
    ("envelope blocked \u2013 user", "rejected"),
    ("block policy for envelope from address", "rejected"),
    ("exceeding outbound thread limit", "toomanyconn"),
    ("email rejected due to security policies", "virusdetected"),  # virus or spam signature
)
_MIMECAST_WORDS = (
    "envelope",
    "reputation",
    "blacklisted",
    "email size",
    "inbounds",
    "polic",
    "thread limit",
    "network not allowed",
)


def _provider_reason(text: str, host: str) -> str | None:
    if "ofr" in text or "lpn" in text or "ouk" in text:
        m = _ORANGE_RE.search(text)
        if m:
            reason = _ORANGE_CODES.get(m.group(1))
            if reason:
                return reason
    if "aup#" in text:
        m = _SPECTRUM_RE.search(text)
        if m:
            code = int(m.group(1))
            for low, high, reason in _SPECTRUM_CODES:
                if low <= code <= high:
                    return reason
    if "[tss" in text or "permanently deferred" in text:
        yahoo = _YAHOO_HOST_RE.search(host) or _YAHOO_HOST_RE.search(text)
        if yahoo and _YAHOO_TSS_RE.search(text):
            return "rejected"
    if any(word in text for word in _MIMECAST_WORDS):
        for phrase, reason in _MIMECAST_PHRASES:
            if phrase in text:
                return reason
    return None


_SENDER_SIDE = frozenset({"userunknown", "hostunknown", "onhold", "filtered", "undefined"})
_CLIENT_SIDE = frozenset(
    {
        "userunknown",
        "hostunknown",
        "onhold",
        "filtered",
        "undefined",
        "rejected",
        "securityerror",
    }
)


def _reason(
    text: str,
    status: str | None,
    reply_code: int | None,
    command: str | None = None,
    host: str = "",
) -> str:
    if command is None and text:
        command = smtp_command(text)
    reason = _base_reason(text, status, reply_code, command, host)
    if command == "MAIL" and (
        reason in _SENDER_SIDE or (reason == "securityerror" and "access denied" in text)
    ):
        return "rejected"  # the session failed at MAIL FROM: the sender was refused
    if command in ("CONN", "HELO") and reason in _CLIENT_SIDE:
        return "blocked"  # refused at connection or greeting: the sending host was refused
    return reason


def _first_rule(text: str) -> str | None:
    """The reason of the first phrase rule that matches. Plain loops rather than any() over
    generators: this runs dozens of gate checks per text and is the classifier's hot path."""
    for reason, rule_gate, entries in _COMPILED_RULES:
        if rule_gate is not None:
            for lit in rule_gate:
                if lit in text:
                    break
            else:
                continue
        for regex, gate in entries:
            if gate is not None:
                for lit in gate:
                    if lit in text:
                        break
                else:
                    continue
            if regex.search(text):
                return reason
    return None


def _base_reason(
    text: str, status: str | None, reply_code: int | None, command: str | None, host: str = ""
) -> str:
    if status:
        decisive = _DECISIVE_STATUS.get(status)
        if decisive:
            return decisive
        if status.startswith("2."):
            return "undefined"
    if text:
        provider = _provider_reason(text, host)
        if provider:
            return provider
        reason = _first_rule(text)
        if reason:
            return _refine(reason, text, status, command, reply_code)
    if status:
        reason = _STATUS_REASON.get(status)
        if reason:
            return reason
        subject = status[2:4]
        if subject == "6.":
            return "contenterror"
        if subject == "7.":
            return "securityerror"
    if reply_code is not None:
        reason = _REPLY_REASON.get(reply_code)
        if reason and reason != "onhold":
            return reason
    return "onhold" if (status or reply_code) else "undefined"


def classify(
    text: str,
    *,
    status: str | None = None,
    reply_code: int | None = None,
    command: str | None = None,
    remote_host: str | None = None,
) -> Verdict:
    """Classify a delivery failure from the remote server's words and codes.

    ``status`` is the enhanced status ("5.1.1"); when None it is read from the text. ``reply_code``
    is the SMTP reply code (550); when None it is read from the text. ``command`` is the SMTP
    command the reply answered ("RCPT", "MAIL", "DATA", "HELO") when the caller knows it; when
    None it is read from the text ("in reply to end of DATA command", "after RCPT TO", ...).
    ``remote_host`` is the name of the server that sent the reply (a DSN's Remote-MTA), used
    for the few providers whose codes mean something of their own.
    """
    raw = text or ""
    norm = _SPACE_RE.sub(" ", raw.lower()).strip()
    code = _normalise_status(status) if status else extract_status(raw)
    reply = reply_code if reply_code is not None else extract_reply_code(raw)
    host = remote_host.lower() if remote_host else ""
    reason = _reason(norm, code, reply, command.upper() if command else None, host)
    temporary = bool(
        (code and code.startswith("4."))
        or (reply is not None and 400 <= reply < 500)
        or _TEMPORARY_RE.search(norm)
    )
    return _verdict(reason, temporary)


_RETRY_RE = re.compile(
    r"(?:try(?: it)? again|retry|resend|wait|come back|back off|deferred)"
    r"[^.;\d]{0,40}?\(?(\d{1,6})\s*(seconds?|secs?|s|minutes?|mins?|m|hours?|hrs?|h)\b"
)
_UNIT = {"s": 1, "m": 60, "h": 3600}


def retry_after(text: str) -> int | None:
    """Seconds to wait, from texts like "try again in 5 minutes" or "try again later (30s)"."""
    if not text:
        return None
    m = _RETRY_RE.search(text.lower())
    if not m:
        return None
    return int(m.group(1)) * _UNIT[m.group(2)[0]]
