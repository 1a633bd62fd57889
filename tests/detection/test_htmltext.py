"""html_to_views: what a reader sees, and what is hidden from them."""

from __future__ import annotations

import pytest

from detection.htmltext import HtmlViews, html_to_views


def test_zero_size_span_inside_a_word_is_hidden():
    views = html_to_views('<p>ver<span style="font-size:0">quarterly agenda</span>ify</p>')

    assert views.visible == "verify"
    assert views.hidden == "quarterly agenda"


@pytest.mark.parametrize(
    "style",
    [
        "display:none",
        "DISPLAY: NONE !important",
        "visibility:hidden",
        "font-size:0px",
        "font-size:1px",
        "opacity:0",
        "max-height:0;overflow:hidden",
        "position:absolute;left:-9999px",
        "color:transparent",
        "color:rgba(0,0,0,0)",
    ],
)
def test_inline_style_hides_text(style):
    views = html_to_views(f'<p>Shown</p><div style="{style}">secret words</div>')

    assert views.visible == "Shown"
    assert views.hidden == "secret words"


def test_class_hidden_by_a_style_rule():
    html = (
        "<html><head><style>/* x */ .ghost, p.other { display: none } "
        "@media (max-width: 600px) { .mobile { display: none } }</style></head>"
        '<body><p class="x ghost">hidden one</p><p class="mobile">Shown on desktop</p></body>'
    )
    views = html_to_views(html)

    assert views.visible == "Shown on desktop"
    assert views.hidden == "hidden one"


def test_white_on_white_text_is_hidden():
    views = html_to_views('<p>Dear user, <font color="#FFFFFF">invoice payment</font> thanks</p>')

    assert views.visible == "Dear user, thanks"
    assert views.hidden == "invoice payment"


def test_white_on_dark_background_is_visible():
    html = '<table bgcolor="#1a1a1a"><tr><td style="color:#fff">Welcome aboard</td></tr></table>'

    assert html_to_views(html).visible == "Welcome aboard"


def test_newsletter_preheader_stays_in_hidden_text():
    html = (
        '<div style="display:none;max-height:0;overflow:hidden">This week: three new recipes</div>'
        "<h1>Kitchen notes</h1><p>" + "Our long article about soup. " * 20 + "</p>"
    )
    views = html_to_views(html)

    assert views.hidden == "This week: three new recipes"
    assert views.visible.startswith("Kitchen notes Our long article")


def test_links_images_and_linked_images_are_counted():
    html = (
        '<a href="https://shop.example.com/a">Shop <b>now</b></a>'
        '<a href="https://shop.example.com/b"><img src="banner.png"></a>'
        '<img src="logo.png"><img src="pixel.gif" width="1" height="1">'
    )
    views = html_to_views(html)

    assert views.links == (
        ("https://shop.example.com/a", "Shop now"),
        ("https://shop.example.com/b", ""),
    )
    assert (views.image_count, views.linked_image_count) == (2, 1)


def test_block_elements_separate_words():
    assert (
        html_to_views("<div>one</div><div>two</div>three<br>four").visible == "one two three four"
    )


def test_script_and_style_are_not_text():
    html = "<style>p{color:red}</style><script>var a = 1;</script><p>Body</p>"

    assert html_to_views(html).visible == "Body"


@pytest.mark.parametrize(
    "html",
    ["", "   ", "<", "</p></div>", "\x00<p>a</p>", '<?xml version="1.0" encoding="x"?><p>a'],
)
def test_damaged_html_never_raises(html):
    assert isinstance(html_to_views(html), HtmlViews)


def test_deeply_nested_html_is_read():
    html = "<div>" * 5000 + "deep text" + "</div>" * 5000

    assert "deep text" in html_to_views(html).visible
