"""Named detectors: each fires on its attack and stays silent on the attack's benign twin.

Every message is synthetic; names are placeholders. The organisation owns example.com,
partners with example.org and buys from example.net; lookalikes of those are the only
other domains used, plus one internationalised domain written in its own script.
"""

from __future__ import annotations

import logging
from email.message import EmailMessage

import pytest

from detection import detectors
from detection.detectors import (
    CATEGORIES,
    DETECTOR_NAMES,
    Detector,
    DetectorContext,
    Hit,
    name_key,
    run_detectors,
)
from detection.directory import EMPTY_DIRECTORY, Directory, Person
from detection.lookalike import find_lookalike, skeleton
from detection.parsing import ParsedMessage, parse_message
from detection.signals import SenderFacts
from tests.synthetic_mail import make_message

DIRECTORY = Directory(
    organisation="Example Corp",
    domains=("example.com",),
    people=(
        Person("Alice Example", ("alice@example.com",), "executive"),
        Person("Dana Sample", ("dana@example.com",), "finance"),
        Person("Zoë Placeholder", ("zoe@example.com",), "hr"),
        Person("Robert Placeholder", ("robert@example.com",), "staff", ("Bob Placeholder",)),
    ),
    partner_domains=("example.org",),
    vendor_domains=("example.net",),
)
PROTECTED = tuple(DIRECTORY.protected_domains)
FIRST_TIME = DetectorContext(sender_seen_before=False, sender_domain_seen_before=False)
KNOWN = DetectorContext(sender_seen_before=True, sender_domain_seen_before=True)


def _parse(subject, body, sender="Carol Example <carol@example.org>", **kwargs) -> ParsedMessage:
    return parse_message(make_message(subject, body, sender, **kwargs))


def _with_attachments(body: str, names: list[tuple[str, str]], sender: str) -> ParsedMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = "Bob Example <bob@example.com>"
    message["Subject"] = "Documents"
    message.set_content(body)
    for name, content_type in names:
        maintype, subtype = content_type.split("/")
        message.add_attachment(b"placeholder", maintype=maintype, subtype=subtype, filename=name)
    return parse_message(message.as_bytes())


def _hits(parsed, directory=DIRECTORY, context=None) -> dict[str, Hit]:
    return {hit.detector: hit for hit in run_detectors(parsed, directory, context)}


def _link(href: str, text: str) -> str:
    return f'<a href="{href}">{text}</a>'


# the contract
def test_every_hit_has_a_known_category_and_a_bounded_score():
    parsed = _parse(
        "URGENT wire",
        "Wire transfer today to the new bank details, keep this between us.",
        "Alice Example <alice.example@gmail.com>",
        extra_headers="Reply-To: pay@examp1e.com\r\nIn-Reply-To: <a@example.net>\r\n",
    )
    hits = run_detectors(parsed, DIRECTORY, FIRST_TIME)

    assert hits, "expected hits on a message built to trip several detectors"
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    for hit in hits:
        assert hit.category in CATEGORIES
        assert 0.0 <= hit.score <= 1.0
        assert hit.detector in DETECTOR_NAMES and hit.reason


def test_hit_rejects_unknown_category_and_out_of_range_score():
    with pytest.raises(ValueError, match=r"Hit\.category must be one of .* got 'phish'"):
        Hit("x", "phish", 0.5, "r")
    with pytest.raises(ValueError, match=r"Hit\.score must be in \[0, 1\], got 1\.5"):
        Hit("x", "malware", 1.5, "r")


def test_empty_message_and_empty_directory_give_no_hits():
    assert run_detectors(ParsedMessage(), DIRECTORY) == []
    assert run_detectors(ParsedMessage(), EMPTY_DIRECTORY, FIRST_TIME) == []


def test_empty_directory_silences_impersonation_and_lookalikes():
    parsed = _parse("Hello", "Are you at your desk?", "Alice Example <alice@examp1e.com>")
    assert _hits(parsed, EMPTY_DIRECTORY) == {}


def test_failing_detector_is_logged_and_skipped(monkeypatch, caplog):
    def explode(view):
        raise RuntimeError("boom")

    broken = Detector("broken", "malware", "always fails", explode)
    monkeypatch.setattr(detectors, "DETECTORS", (broken, *detectors.DETECTORS))
    parsed = _with_attachments(
        "See attached.", [("setup.exe", "application/octet-stream")], "a@b.example.com"
    )

    with caplog.at_level(logging.WARNING, logger="detection.detectors"):
        hits = _hits(parsed)

    assert "malware_lure" in hits and "broken" not in hits
    assert "detector broken failed (RuntimeError)" in caplog.text


def test_context_from_sender_facts():
    context = DetectorContext.from_sender_facts(
        SenderFacts(messages_before=0, domain_messages_before=4),
        known_domains=frozenset({"example.net"}),
    )
    assert context.sender_seen_before is False
    assert context.sender_domain_seen_before is True
    assert context.known_domains == {"example.net"}


# names and lookalikes
@pytest.mark.parametrize(
    "shown",
    ["Alice Example", "ALICE EXAMPLE", "Example, Alice", "Alice B. Example", "Dr Alice Example",
     "Alice Example (CEO)", "\u0410lice Ex\u0430mple", "Alicé Example", '"Alice  Example"'],
)  # fmt: skip
def test_name_key_ignores_case_accents_order_initials_and_confusables(shown):
    assert name_key(shown) == name_key("Alice Example")


def test_name_key_keeps_different_people_apart():
    assert name_key("Alice Examples") != name_key("Alice Example")
    assert name_key("Alice Example via Docs") != name_key("Alice Example")


@pytest.mark.parametrize(
    ("candidate", "technique"),
    [
        ("xn--exmple-4nf.com", "homoglyph"),  # Cyrillic а
        ("xn--exmple-cua.com", "accented"),  # exämple
        ("examp1e.com", "ascii_swap"),
        ("exarnple.com", "ascii_swap"),
        ("exampel.com", "typo"),
        ("exmple.net", "typo"),
        ("example-secure.com", "added_word"),
        ("exampleinvoice.net", "added_word"),
        ("example.co", "tld_swap"),
    ],
)
def test_lookalike_techniques(candidate, technique):
    found = find_lookalike(candidate, PROTECTED)
    assert found is not None and found.technique == technique


def test_lookalike_shown_inside_another_domain_as_subdomain():
    found = find_lookalike("examp1e-login.net", PROTECTED, host="example.com.examp1e-login.net")
    assert found.score >= 0.75
    assert find_lookalike("examp1e.net", ("example.com",), "example.com.examp1e.net").technique in (
        "ascii_swap", "subdomain",
    )  # fmt: skip


def test_short_names_match_only_beside_lure_words_and_are_never_typo_matched():
    assert find_lookalike("abcd-secure.com", ("abcd.com",)).technique == "added_word"
    assert find_lookalike("abcd-news.com", ("abcd.com",)) is None
    assert find_lookalike("abce.com", ("abcd.com",)) is None


def test_directory_domains_and_unrelated_idn_are_not_lookalikes():
    for domain in PROTECTED:
        assert find_lookalike(domain, PROTECTED) is None
    assert find_lookalike("xn--e1afmkfd.xn--p1ai", PROTECTED) is None  # пример.рф
    assert skeleton("\u0435x\u0430mple") == "example"


# executive and colleague impersonation
def test_executive_name_from_free_mail_is_impersonation():
    parsed = _parse(
        "Quick question", "Are you at your desk?", "Alice Example <ceo.alice@gmail.com>"
    )
    hit = _hits(parsed)["executive_impersonation"]

    assert hit.category == "executive_impersonation"
    assert hit.score >= 0.8
    assert (
        '"Alice Example"' in hit.reason and "gmail.com" in hit.reason and "executive" in hit.reason
    )


def test_reordered_name_from_lookalike_domain_scores_highest():
    parsed = _parse("Hello", "Call me back.", '"Example, Alice B." <alice@examp1e.com>')
    hit = _hits(parsed)["executive_impersonation"]
    assert hit.score >= 0.9 and "examp1e.com, a lookalike of own domain example.com" in hit.reason


def test_display_name_showing_the_executives_address_is_impersonation():
    parsed = _parse("Hello", "Are you free?", '"alice@example.com" <helper@gmail.com>')
    assert "executive_impersonation" in _hits(parsed)


def test_colleague_alias_with_accents_from_outside_is_colleague_impersonation():
    hits = _hits(_parse("Payroll", "Please update my details.", "Zoe Placeholder <zoe@gmail.com>"))
    assert hits["colleague_impersonation"].category == "executive_impersonation"
    assert "hr Zoë Placeholder" in hits["colleague_impersonation"].reason
    hits = _hits(_parse("Hi", "Lunch?", "Bob Placeholder <bob.placeholder@gmail.com>"))
    assert "colleague_impersonation" in hits


def test_executive_writing_from_own_address_is_not_impersonation():
    for sender in ("Alice Example <alice@example.com>", "Example, Alice <alice@example.com>"):
        assert _hits(_parse("Board pack", "Attached for Thursday.", sender), context=KNOWN) == {}


def test_namesake_at_partner_seen_before_does_not_fire():
    parsed = _parse("Project", "Notes from today.", "Alice Example <alice@example.org>")
    assert _hits(parsed, context=KNOWN) == {}


# lookalike domains
def test_homoglyph_sender_domain_is_a_lookalike():
    parsed = _parse("Hello", "Please see below.", "Billing <billing@ex\u0430mple.net>")
    hit = _hits(parsed)["lookalike_domain"]

    assert hit.score >= 0.9
    assert "xn--exmple-4nf.net" in hit.reason and "vendor example.net" in hit.reason
    assert "homoglyph" in hit.reason


def test_reply_to_with_added_word_and_tld_swapped_link_are_lookalikes():
    parsed = _parse(
        "Statement",
        "Your statement: " + _link("https://portal.example.co/statement", "statement"),
        "Carol Example <carol@example.org>",
        html=True,
        extra_headers="Reply-To: accounts@example-secure.com\r\n",
    )
    reason = _hits(parsed)["lookalike_domain"].reason
    assert (
        "Reply-To domain example-secure.com imitates own domain example.com (added word)" in reason
    )
    assert "link domain example.co imitates own domain example.com (tld swap)" in reason


def test_legitimate_idn_domain_in_its_own_script_is_not_a_lookalike():
    parsed = _parse(
        "Приглашение",
        "Добрый день! " + _link("https://пример.рф/events", "пример.рф"),
        "Команда <team@пример.рф>",
        html=True,
    )
    assert "lookalike_domain" not in _hits(parsed)


def test_known_domain_is_never_a_lookalike():
    parsed = _parse("Hello", "Notes attached.", "Carol <carol@exampel.com>")
    context = DetectorContext(known_domains=frozenset({"exampel.com"}))
    assert "lookalike_domain" not in _hits(parsed, context=context)


def test_tld_namesake_the_organisation_has_safe_mail_from_does_not_fire():
    parsed = _parse("Monthly digest", "This month's articles.", "News <news@example.co>")
    assert _hits(parsed, context=FIRST_TIME)["lookalike_domain"].score == pytest.approx(0.7)
    assert "lookalike_domain" not in _hits(parsed, context=KNOWN)


def test_homoglyph_lookalike_still_fires_from_a_domain_seen_before():
    parsed = _parse("Invoice", "Please see the invoice.", "Billing <billing@exаmple.com>")
    assert "lookalike_domain" in _hits(parsed, context=KNOWN)


# payment fraud
def test_bank_change_from_vendor_lookalike_is_payment_fraud():
    parsed = _parse(
        "Updated remittance",
        "Please note our new bank account details below and process the payment today.",
        "Accounts <accounts@examp1e.net>",
    )
    hit = _hits(parsed, context=FIRST_TIME)["payment_fraud"]

    assert hit.score >= 0.8
    assert '"new bank account"' in hit.reason
    assert "examp1e.net imitates vendor example.net" in hit.reason
    assert "first-time sender" in hit.reason


def test_gift_card_request_with_secrecy_under_executive_name_is_payment_fraud():
    parsed = _parse(
        "Favour",
        "I need you to buy gift cards for a client right away. Keep this between us, "
        "I am in a meeting.",
        "Alice Example <alice.example.office@gmail.com>",
    )
    hits = _hits(parsed)
    assert hits["payment_fraud"].score >= 0.8
    assert '"gift cards"' in hits["payment_fraud"].reason
    assert "executive Alice Example" in hits["payment_fraud"].reason
    assert "executive_impersonation" in hits


def test_vendors_usual_invoice_from_vendors_real_domain_does_not_fire():
    parsed = _parse(
        "Invoice 4411",
        "Hello, please find invoice 4411 for March. Please make payment within 30 days to the "
        "account on file. Phone +1 (201) 555-0123 with any questions.",
        "Example Supplies Billing <billing@example.net>",
    )
    assert _hits(parsed, context=KNOWN) == {}
    assert _hits(parsed) == {}


def test_wire_request_alone_from_unknown_sender_does_not_fire():
    parsed = _parse("Payment run", "Please process the payment for the attached order.")
    assert "payment_fraud" not in _hits(parsed)


# credential phishing
def test_quota_lure_with_mismatched_lookalike_link_is_credential_phishing():
    body = "Your mailbox is full. Sign in to keep your messages: " + _link(
        "http://examp1e.com/owa/login", "https://mail.example.com/owa"
    )
    hit = _hits(_parse("Mailbox quota", body, "IT Desk <it@example.org>", html=True))[
        "credential_phishing"
    ]

    assert hit.score >= 0.8
    assert '"mailbox is full"' in hit.reason
    assert "link text shows example.com but goes to examp1e.com" in hit.reason


def test_password_lure_with_link_to_unseen_domain_is_credential_phishing():
    body = "Your password expires today. " + _link("https://example.net/reset", "Keep password")
    parsed = _parse("Password expiry", body, "IT Desk <it@example.org>", html=True)
    hit = _hits(parsed, EMPTY_DIRECTORY, FIRST_TIME)["credential_phishing"]
    assert "link to example.net, a domain not seen before" in hit.reason
    history = DetectorContext(known_domains=frozenset({"example.org"}))
    assert "credential_phishing" in _hits(parsed, EMPTY_DIRECTORY, history)


def test_lure_from_known_sender_linking_to_its_tracking_domain_does_not_fire():
    body = "Your password expires today. " + _link("https://example.net/click?u=1", "Keep password")
    parsed = _parse("Password expiry", body, "Service <no-reply@example.org>", html=True)
    assert _hits(parsed, EMPTY_DIRECTORY) == {}
    assert _hits(parsed, EMPTY_DIRECTORY, KNOWN) == {}


def test_document_share_lure_with_html_attachment_is_credential_phishing():
    parsed = _with_attachments(
        "A document was shared with you. View the document in the attachment.",
        [("Statement.html", "text/html")],
        "Docs <docs@example.org>",
    )
    hit = _hits(parsed)["credential_phishing"]
    assert '"Statement.html"' in hit.reason


def test_password_reset_linking_to_the_senders_domain_does_not_fire():
    body = "We received a request to reset your password. " + _link(
        "https://accounts.example.net/reset?token=abc", "Reset password"
    )
    parsed = _parse("Reset your password", body, "Service <no-reply@example.net>", html=True)
    assert _hits(parsed, EMPTY_DIRECTORY) == {}
    assert _hits(parsed, EMPTY_DIRECTORY, KNOWN) == {}


def test_newsletter_with_hidden_preheader_does_not_fire():
    body = (
        '<div style="display:none">Sign in to verify your account and claim your offer</div>'
        "<p>This month's news from the team.</p>"
        + _link("https://news.example.org/issue/12", "Read the issue")
        + _link("https://news.example.org/unsubscribe", "Unsubscribe")
    )
    parsed = _parse("March newsletter", body, "Example News <news@example.org>", html=True)
    assert parsed.hidden_text, "the preheader should be parsed as hidden text"
    assert _hits(parsed, EMPTY_DIRECTORY) == {}
    assert _hits(parsed) == {}


# malware lures
FILES = "Files <files.desk@gmail.com>"


@pytest.mark.parametrize(
    ("name", "evidence"),
    [
        ("invoice.pdf.exe", "disguised as .pdf (double extension)"),
        ("invoice\u202egpj.exe", "right-to-left"),
        ("update.js", "runs code (.js)"),
        ("scan.iso", "disk image"),
        ("setup.exe.zip", "named for an executable (.exe)"),
        ("budget.xlsm", "macro-enabled document"),
    ],
)
def test_risky_attachment_is_a_malware_lure(name, evidence):
    parsed = _with_attachments(
        "Please see the attached file.", [(name, "application/octet-stream")], FILES
    )
    hit = _hits(parsed)["malware_lure"]
    assert hit.category == "malware" and hit.score >= 0.6
    assert evidence in hit.reason


def test_macro_document_asking_to_enable_content_scores_high():
    parsed = _with_attachments(
        "Open the file and click Enable Content to view it.",
        [("order.docm", "application/vnd.ms-word.document.macroEnabled.12")],
        "Orders <orders@example.org>",
    )
    hit = _hits(parsed)["malware_lure"]
    assert hit.score >= 0.9 and '"enable content"' in hit.reason


def test_archive_with_password_in_text_is_a_malware_lure():
    parsed = _with_attachments(
        "The archive password is 4421.", [("documents.zip", "application/zip")], FILES
    )
    assert "malware_lure" in _hits(parsed)


@pytest.mark.parametrize(
    "name", ["report.pdf", "photos.zip", "backup.tar.gz", "minutes v1.2.docx", "budget.xlsx"]
)
def test_ordinary_attachment_is_not_a_malware_lure(name):
    parsed = _with_attachments(
        "Files from today's meeting.", [(name, "application/octet-stream")], FILES
    )
    assert "malware_lure" not in _hits(parsed)


def test_macro_spreadsheet_from_a_known_sender_does_not_fire():
    parsed = _with_attachments(
        "Monthly model attached.", [("model.xlsm", "application/octet-stream")], "d@example.net"
    )
    assert "malware_lure" not in _hits(parsed, context=KNOWN)


# thread hijack
REPLY = "In-Reply-To: <thread-1@example.net>\r\nReferences: <thread-1@example.net>\r\n"
THREAD = DetectorContext(sender_seen_before=True, thread_domains=frozenset({"example.net"}))


def test_reply_from_lookalike_of_the_threads_domain_is_thread_hijack():
    parsed = _parse(
        "RE: Order 77", "Updated details attached.", "Carol <carol@exampl.net>", extra_headers=REPLY
    )
    hit = _hits(parsed, EMPTY_DIRECTORY, THREAD)["thread_hijack"]
    assert hit.score >= 0.9
    assert "exampl.net imitates example.net" in hit.reason


def test_reply_from_domain_new_to_the_thread_is_thread_hijack():
    parsed = _parse("RE: Order 77", "See below.", "Carol <carol.x@gmail.com>", extra_headers=REPLY)
    reason = _hits(parsed, DIRECTORY, THREAD)["thread_hijack"].reason
    assert "reply from gmail.com, which this thread never had" in reason


def test_reply_with_reply_to_diverting_to_free_mail_is_thread_hijack():
    parsed = _parse(
        "RE: Order 77", "Please answer to my other address.", "Carol <carol@example.net>",
        extra_headers=REPLY + "Reply-To: carol.orders@gmail.com\r\n",
    )  # fmt: skip
    reason = _hits(parsed, DIRECTORY, THREAD)["thread_hijack"].reason
    assert "Reply-To diverts answers from example.net to gmail.com" in reason


def test_normal_reply_from_the_threads_domain_does_not_fire():
    parsed = _parse(
        "RE: Order 77", "Thanks, shipped today.", "Carol <carol@example.net>",
        extra_headers=REPLY + "Reply-To: orders@example.net\r\n",
    )  # fmt: skip
    assert _hits(parsed, DIRECTORY, THREAD) == {}
    assert _hits(parsed, DIRECTORY) == {}


# callback phishing
RENEWAL = (
    "Your subscription has been renewed and $399.99 will be charged to your card today. "
    "If you did not authorise this renewal, call us at +1 (201) 555-0123 to cancel."
)


def test_renewal_notice_with_phone_number_and_no_links_is_callback_phishing():
    hit = _hits(_parse("Order confirmation", RENEWAL, "Billing Team <billing.team@gmail.com>"))[
        "callback_phishing"
    ]
    assert hit.score >= 0.7
    assert "+1 201-555-0123" in hit.reason
    assert '"subscription"' in hit.reason and '"$399.99"' in hit.reason


def test_support_signature_with_phone_number_and_no_billing_wording_does_not_fire():
    body = (
        "Thanks for your question, the fix is in the next release.\n"
        "Support Team\nPhone: +1 (201) 555-0123"
    )
    assert _hits(_parse("Your question", body, "Support <support@example.org>")) == {}
    assert _hits(_parse("Your question", body, "Support <helpdesk@gmail.com>")) == {}


def test_renewal_notice_with_a_link_or_from_a_known_sender_does_not_fire():
    with_link = _parse("Renewal", RENEWAL + " Manage it at https://example.org/account")
    assert "callback_phishing" not in _hits(with_link, EMPTY_DIRECTORY)
    known = _parse("Renewal", RENEWAL, "Billing <billing@example.org>")
    assert "callback_phishing" not in _hits(known, EMPTY_DIRECTORY, KNOWN)
