"""The host a browser would actually go to, and the tricks that hide it."""

from __future__ import annotations

import pytest

from detection.urls import Url, browser_host, extract_urls, make_url, registered_domain


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
