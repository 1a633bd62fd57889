"""The host a browser would actually go to, and the tricks that hide it."""

from __future__ import annotations

import time

import pytest

from detection.urls import (
    MAX_ANCHOR_CHARS,
    Url,
    browser_host,
    extract_urls,
    make_url,
    registered_domain,
)


@pytest.mark.parametrize(
    ("raw", "host", "tricks"),
    [
        ("https://www.example.com/login", "www.example.com", ()),
        ("HTTPS://WWW.EXAMPLE.COM/", "www.example.com", ()),
        ("http://bank.example.com@evil.example.net/", "evil.example.net", ("userinfo",)),
        ("http://a@b@evil.example.net/", "evil.example.net", ("userinfo",)),
        ("http:\\\\evil.example.net\\login", "evil.example.net", ("backslash",)),
        ("http://bank.example.com\\@evil.example.net/", "bank.example.com", ("backslash",)),
        ("http:/evil.example.net/", "evil.example.net", ("backslash",)),
        ("http://%65vil.example.net/", "evil.example.net", ("percent_host",)),
        ("http://3232235777/", "192.168.1.1", ("numeric_host",)),
        ("http://0xC0A80101/", "192.168.1.1", ("numeric_host",)),
        ("http://0300.0250.1.1/", "192.168.1.1", ("numeric_host",)),
        ("http://192.168.1.1/", "192.168.1.1", ()),
        ("hxxp://evil.example.net/", "evil.example.net", ("defanged_scheme",)),
        ("www.example.org/offer", "www.example.org", ()),
        ("http://evil.example.net./", "evil.example.net", ("trailing_dot",)),
        ("http://ex\u0430mple.com/", "xn--exmple-4nf.com", ("punycode",)),
        ("http://xn--exmple-4nf.com/", "xn--exmple-4nf.com", ("punycode",)),
        ("ht\ntp://evil.example.net/", "evil.example.net", ("control_char",)),
        ("http://[::1]/", "::1", ()),
    ],
)
def test_browser_host_and_tricks(raw, host, tricks):
    assert browser_host(raw) == (host, tricks)


@pytest.mark.parametrize(
    "raw", ["mailto:a@example.com", "javascript:alert(1)", "ftp://example.com/", "http://[bad/", ""]
)
def test_non_web_or_broken_links_have_no_host(raw):
    assert browser_host(raw)[0] == ""


def test_obfuscated_host_property():
    assert make_url("http://%65vil.example.net/").obfuscated_host
    assert not make_url("http://bank.example.com@evil.example.net/").obfuscated_host
    assert not make_url("https://www.example.com/").obfuscated_host


def test_registered_domain_uses_the_public_suffix_list():
    assert registered_domain("a.b.example.co.uk") == "example.co.uk"
    assert registered_domain("192.168.1.1") == ""


def test_text_domain_reads_the_anchor_text():
    url = Url("https://evil.example.net/", "evil.example.net", "example.net", "www.example.com")

    assert url.text_domain == "example.com"


def test_extract_urls_keeps_anchors_first_and_each_link_once():
    links = [("https://a.example.com/", "A"), ("mailto:x@example.com", "mail")]
    urls = extract_urls("see https://a.example.com/ and http://b.example.org/x.", links)

    assert [(u.raw, u.text) for u in urls] == [
        ("https://a.example.com/", "A"),
        ("http://b.example.org/x", ""),
    ]


def test_extract_urls_respects_the_limit():
    text = " ".join(f"http://h{i}.example.com/" for i in range(50))

    assert len(extract_urls(text, (), limit=10)) == 10


def test_href_line_breaks_are_removed_from_raw():
    url = make_url("http://exa\nmple.com/pa\r\nth")

    assert url.raw == "http://example.com/path"
    assert url.host == "example.com"


@pytest.mark.parametrize(
    ("text", "domain"),
    [
        ("Visit WWW.Example.COM.", "example.com"),
        ("sign in at login.example.co.uk today", "example.co.uk"),
        ("x.example.com-login", "example.com"),
        ("version 1.2.3 only", ""),
        ("a1." * 3 + "1", ""),
    ],
)
def test_text_domain_finds_the_first_host_shown(text, domain):
    assert Url("http://x.example.net/", "x.example.net", "example.net", text).text_domain == domain


def test_text_domain_is_linear_in_long_dotted_anchor_text():
    url = Url("http://x.example.com/", "x.example.com", "example.com", "a1." * 100_000 + "1")
    started = time.perf_counter()

    assert url.text_domain == ""
    assert time.perf_counter() - started < 0.05


def test_make_url_caps_anchor_text_and_removes_its_controls():
    url = make_url("http://x.example.com/", "pay\x1b[2Jnow " + "a" * 1000)

    assert len(url.text) == MAX_ANCHOR_CHARS
    assert url.text.startswith("pay [2Jnow")


@pytest.mark.parametrize(
    ("raw", "host"),
    [
        ("http://evil%0a.example.com/", "evil%0A.example.com"),
        ("http://evil%0d%0aX-Injected%3a1.example.com/", "evil%0D%0Ax-injected%3A1.example.com"),
        ("http://evil%00.example.com/", "evil%00.example.com"),
        ("http://evil.example.net%2fpaypal.com/", "evil.example.net%2Fpaypal.com"),
        ("http://bank.example.com%40evil.example.net/", "bank.example.com%40evil.example.net"),
        ("http://evil .example.net/", "evil%20.example.net"),
        ("http://ev\x01il.example.net/", "ev%01il.example.net"),
        ("http://evil%3a8080.example.net/", "evil%3A8080.example.net"),
    ],
)
def test_host_with_forbidden_code_points_is_bad_and_shown_encoded(raw, host):
    url = make_url(raw)

    assert "bad_host" in url.tricks
    assert url.host == host
    assert url.registered_domain == ""
    assert not any(c.isspace() or not c.isprintable() or c in "/@" for c in url.host)


@pytest.mark.parametrize(
    "raw", ["http://a.example.com:99999/", "http://a.example.com:8o/", "http://xn--evil-.example/"]
)
def test_bad_port_or_punycode_is_a_bad_host(raw):
    url = make_url(raw)

    assert "bad_host" in url.tricks
    assert url.registered_domain == ""


def test_valid_punycode_and_port_are_not_bad_hosts():
    assert "bad_host" not in make_url("http://xn--mnchen-3ya.example.com:8080/").tricks
    assert make_url("http://xn--mnchen-3ya.example.com/").registered_domain == "example.com"


def test_ipv6_hosts_are_written_without_brackets_and_zone_ids_are_bad():
    assert browser_host("http://[0:0::1]:8080/") == ("::1", ())
    assert "bad_host" in browser_host("http://[fe80::1%25eth0]/")[1]


def test_control_characters_in_raw_are_percent_encoded():
    url = make_url("http://example.com/a\x1bb")

    assert url.raw == "http://example.com/a%1Bb"
    assert url.host == "example.com"


def test_bad_hosts_are_kept_by_extract_urls():
    urls = extract_urls("", [("http://bank.example.com%40evil.example.net/", "Bank")])

    assert [u.tricks for u in urls] == [("percent_host", "bad_host")]
