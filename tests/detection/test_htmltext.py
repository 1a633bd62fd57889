"""html_to_views: what a reader sees, and what is hidden from them."""

from __future__ import annotations

import pytest

from detection.htmltext import HtmlViews, html_to_views
from detection.urls import MAX_ANCHOR_CHARS


def test_zero_size_span_inside_a_word_is_hidden():
    views = html_to_views('<p>ver<span style="font-size:0">quarterly agenda</span>ify</p>')

    assert views.visible == "verify"
    assert views.hidden == "quarterly agenda"


def test_nesting_past_the_parser_limit_leaves_no_tag_fragment_in_the_text():
    html = "<div>" * 100_000 + "deep text" + "</div>" * 100_000

    views = html_to_views(html)

    assert views.truncated
    assert "<" not in views.visible


def test_a_stray_less_than_sign_at_the_end_of_the_text_is_kept():
    assert html_to_views("<p>a < b</p>").visible == "a < b"


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


@pytest.mark.parametrize(
    "style",
    [
        "color:hsl(0,0%,100%)",
        "color:hsl(0deg 0% 100%)",
        "color:#ffffffff",
        "color:#ffff",
        "color:rgb(255 255 255)",
        "color:rgb(100%,100%,100%)",
        "color:white",
        "color:ghostwhite",
        "color:snow",
        "color:rgba(255 255 255 / 0%)",
        "color:#0000",
    ],
)
def test_every_css_form_of_white_or_transparent_text_is_hidden(style):
    views = html_to_views(f"<p>Hello</p><span style='{style}'>SECRET</span>")

    assert (views.visible, views.hidden) == ("Hello", "SECRET")


@pytest.mark.parametrize(
    "style",
    [
        "font-size:0.01em",
        "font-size:1%",
        "font-size:1px",
        "font:0/0 a",
        "position:absolute;clip:rect(0,0,0,0);width:1px;height:1px;overflow:hidden",
        "position:absolute;clip:rect(0 0 0 0)",
        "clip-path:inset(50%)",
        "transform:scale(0)",
        "transform:translate(1px) scaleY(0)",
        "display:/*x*/none",
        "visibility:/* unclosed comment */hidden",
    ],
)
def test_tiny_clipped_scaled_or_commented_hiding_is_hidden(style):
    views = html_to_views(f"<p>Hello</p><span style='{style}'>SECRET</span>")

    assert (views.visible, views.hidden) == ("Hello", "SECRET")


@pytest.mark.parametrize(
    "style",
    [
        "color:hsl(0,0%,50%)",
        "color:rgb(0 0 255)",
        "color:#1a1a1a",
        "font-size:0.8em",
        "font-size:90%",
        "transform:scale(1)",
        "width:10%;overflow:hidden",
        "color:inherit",
    ],
)
def test_readable_text_stays_visible(style):
    views = html_to_views(f"<p>Hello</p><span style='{style}'>SECRET</span>")

    assert (views.visible, views.hidden) == ("Hello SECRET", "")


def test_stylesheet_dark_page_keeps_light_text_visible():
    html = (
        "<style>body{background:#111}</style>"
        '<body><p style="color:#fff">Welcome back</p><p>Your order shipped</p></body>'
    )
    views = html_to_views(html)

    assert views.visible == "Welcome back Your order shipped"
    assert views.hidden == ""


def test_default_coloured_text_on_a_dark_page_stays_visible():
    html = '<body style="background:#000"><p>Your order shipped</p></body>'

    assert html_to_views(html).visible == "Your order shipped"


def test_text_painted_like_its_own_stylesheet_background_is_hidden():
    html = (
        "<style>.dark{background:#000;color:#eee}</style>"
        '<div class="dark">Light text <span style="color:#000">black on black</span></div>'
    )
    views = html_to_views(html)

    assert (views.visible, views.hidden) == ("Light text", "black on black")


def test_unmatchable_stylesheet_background_makes_camouflage_unknown():
    html = '<style>div p{background:#000}</style><div><p style="color:#fff">White text</p></div>'

    assert html_to_views(html).visible == "White text"


def test_transparent_background_shows_its_parents():
    html = (
        '<table bgcolor="#1a1a1a"><tr><td style="color:#fff">Shown '
        '<span style="background:transparent;color:#1a1a1a">dark on dark</span></td></tr></table>'
    )
    views = html_to_views(html)

    assert (views.visible, views.hidden) == ("Shown", "dark on dark")


def test_anchor_text_kept_per_link_is_capped():
    views = html_to_views('<a href="http://x.example.com/">' + "a1." * 10_000 + "1</a>")

    assert len(views.links[0][1]) <= 2 * MAX_ANCHOR_CHARS


def test_id_tag_and_multi_class_rules_hide_only_what_they_match():
    html = (
        "<style>#promo, span.a.b { display: none } em { font-size: 0 }</style>"
        '<div id="promo">one</div><span class="b a">two</span><span class="a">Shown</span>'
        "<em>three</em>"
    )
    views = html_to_views(html)

    assert (views.visible, views.hidden) == ("Shown", "one two three")


@pytest.mark.parametrize("padding", [0, 2000], ids=["short style", "style past the cache"])
def test_a_repeated_inline_style_hides_every_element_it_is_on(padding):
    hiding = "display:none;" + "margin:0;" * (padding // 9)
    html = "".join(
        f'<p>Shown {i}</p><div style="{hiding}">secret {i}</div><p style="color:#222">Also {i}</p>'
        for i in range(3)
    )

    views = html_to_views(html)

    assert views.visible == "Shown 0 Also 0 Shown 1 Also 1 Shown 2 Also 2"
    assert views.hidden == "secret 0 secret 1 secret 2"


@pytest.mark.parametrize(
    "padding", ["color:black;" * 400, "/*" + "x" * 4000 + "*/"], ids=["declarations", "comment"]
)
def test_a_hiding_declaration_after_a_long_padding_still_hides(padding):
    views = html_to_views(f'<p>Visible</p><p style="{padding}display:none">filler words</p>')

    assert views.visible == "Visible"
    assert views.hidden == "filler words"


@pytest.mark.parametrize(
    ("style", "visible", "hidden"),
    [
        ("display:none !important; display:block", "Visible", "filler words"),
        ("display: none ! IMPORTANT;display:inline", "Visible", "filler words"),
        ("display:none; display:block !important", "Visible filler words", ""),
    ],
    ids=["important first", "spaced and upper case", "important last"],
)
def test_an_important_declaration_wins_over_a_plain_one_in_either_order(style, visible, hidden):
    views = html_to_views(f'<p>Visible</p><p style="{style}">filler words</p>')

    assert views.visible == visible
    assert views.hidden == hidden
