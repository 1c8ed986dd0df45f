"""The substance rules on constructed replies, and the graded desk set they are read against (no model)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from worker.quality.substance import FAILS, misses, sendable

GRADED = Path(__file__).resolve().parent.parent / "bench" / "data" / "desk_graded.jsonl"
CATEGORIES = {"faulty_product", "delivery", "billing", "rude_staff", "praise", "question", "vague_anger",
              "off_topic", "review_of_work"}
MUST = {"apologise", "next_step", "thank", "answer"}
MUST_NOT = {"blame_customer", "promise_money", "invent_facts", "order_number", "as_author"}


def item(lang, must=(), must_not=(), terms=(), text=""):
    return {"id": "t", "lang": lang, "category": "question", "text": text, "must": list(must),
            "must_not": list(must_not), "terms": list(terms)}


CASES = [
    # (code, lang, reply that passes the rule, reply that fails it, extra item fields)
    ("apologise", "zh", "您好，非常抱歉给您带来不便。", "您好，我们已经收到您的反馈。", {}),
    ("apologise", "en", "I'm so sorry to hear the kettle stopped working.",
     "Thanks for letting us know about the kettle.", {}),
    ("next_step", "zh", "您好，请私信我们，我们会尽快为您处理。", "您好，非常抱歉让您失望了。", {}),
    ("next_step", "en", "Please send us a photo and we'll look into it.", "We're sorry you feel that way.", {}),
    ("thank", "zh", "您好，感谢您的支持，欢迎再来！", "您好，欢迎您下次再来！", {}),
    ("thank", "en", "Thank you so much for the kind words!", "So glad you enjoyed your stay!", {}),
    ("answer", "zh", "您好，可以开发票的，下单时填写抬头即可。", "您好，欢迎光临本店！", {"terms": ["发票"]}),
    ("answer", "en", "Yes, we do ship to Canada.", "Thanks for reaching out to us!",
     {"terms": ["ship", "Canada", "deliver"]}),
    ("blame_customer", "zh", "您好，很抱歉耳机出现问题，我们会为您核实。", "您好，这是您自己的问题，您没有按照说明书操作。", {}),
    ("blame_customer", "en", "You should have received a confirmation email; we'll check it.",
     "You should have read the instructions before using it.", {}),
    ("promise_money", "zh", "您好，非常抱歉，我们会尽快为您核实扣费情况。", "您好，我们会为您全额退款，并赔偿您50元。", {}),
    ("promise_money", "en", "Feel free to contact us and we'll check the charge.",
     "We'll refund you and add a voucher.", {}),
    ("invent_facts", "zh", "您好，我们会尽快为您处理，祝您有美好的一天。", "您好，我们会在24小时内为您处理，营业时间是上午9点到下午6点。", {}),
    ("invent_facts", "en", "We're here for you and will follow up as soon as we can.",
     "We'll fix this within 2 business days; our store is open until 9 pm.", {}),
    ("order_number", "zh", "您好，非常抱歉，请告诉我们具体的情况。", "您好，请私信我们订单号。", {}),
    ("order_number", "en", "I'm so sorry to hear that, could you tell us what happened?",
     "Please send us your order number.", {}),
    ("as_author", "zh", "您好，感谢您分享读后感，很高兴这本书打动了您。", "您好，作为作者，很高兴您喜欢我的小说。", {}),
    ("as_author", "en", "Thank you for sharing your thoughts on the book!",
     "As the author, I'm glad you enjoyed my book.", {}),
]


@pytest.mark.parametrize("code, lang, good, bad, extra", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_each_rule_passes_a_good_reply_and_fails_a_bad_one(code, lang, good, bad, extra):
    """Each code, in each language, is found in the bad reply and not in the good one."""
    graded = item(lang, **({"must": [code]} if code in MUST else {"must_not": [code]}), **extra)
    assert misses(good, graded) == []
    assert misses(bad, graded) == [code]


def test_every_code_has_a_case_in_both_languages():
    """The table above covers every code FAILS names, in zh and en."""
    assert {(c[0], c[1]) for c in CASES} == {(code, lang) for code in FAILS for lang in ("zh", "en")}


def test_a_good_looking_zh_reply_still_fails_order_number_where_nothing_was_ordered():
    """Apology and next step are found; asking for an order number is flagged when it is a must_not."""
    reply = "您好，非常抱歉给您带来不便，请私信我们订单号，我们会尽快为您处理。"
    complaint = item("zh", must=["apologise", "next_step"],
                     must_not=["blame_customer", "promise_money", "invent_facts"])
    assert misses(reply, complaint) == []
    assert misses(reply, {**complaint, "must_not": complaint["must_not"] + ["order_number"]}) == ["order_number"]


def test_a_refund_within_24_hours_is_both_money_and_an_invented_fact():
    """"a full refund within 24 hours" promises money and a duration the desk cannot know."""
    reply = "I'm so sorry to hear that. We'll send you a full refund within 24 hours."
    complaint = item("en", must=["apologise", "next_step"], must_not=["promise_money", "invent_facts"])
    assert misses(reply, complaint) == ["promise_money", "invent_facts"]


def test_a_figure_the_customer_wrote_is_repeated_not_invented():
    """"让您等了10天" repeats the customer's "10天"; a new figure still counts."""
    graded = item("zh", must_not=["invent_facts"], text="等了10天还没到！")
    assert misses("您好，让您等了10天，真的非常抱歉。", graded) == []
    assert misses("您好，非常抱歉，3天内一定送到。", graded) == ["invent_facts"]
    weeks = item("en", must_not=["invent_facts"], text="It stopped heating after two weeks.")
    assert misses("I'm so sorry it stopped after two weeks, please contact us.", weeks) == []


def test_money_words_are_not_excused_by_the_customer_asking():
    """"I want a refund" -> "we'll refund you" still promises money; only repeated figures are excused."""
    graded = item("en", must_not=["promise_money"], text="Broken on arrival, I want a refund.")
    assert misses("I'm so sorry, we'll refund you right away.", graded) == ["promise_money"]


def test_a_price_the_customer_wrote_is_repeated_not_promised():
    """"your bill went up by $20" repeats the customer's figure; "$20 back" with a new amount does not."""
    graded = item("en", must_not=["promise_money", "invent_facts"], text="My bill went up by $20 this month.")
    assert misses("I'm so sorry your bill went up by $20, we'll check it.", graded) == []
    assert misses("I'm so sorry, we'll credit $25 to your account.", graded) == ["promise_money", "invent_facts"]


def test_tomorrow_counts_as_a_deadline_not_as_a_wish():
    """"明天就给您发货" / "it will arrive tomorrow" invent a date; "祝您明天心情变好" does not."""
    assert misses("您好，明天就给您发货。", item("zh", must_not=["invent_facts"])) == ["invent_facts"]
    assert misses("您好，祝您明天心情变好！", item("zh", must_not=["invent_facts"])) == []
    assert misses("Your parcel will arrive tomorrow.", item("en", must_not=["invent_facts"])) == ["invent_facts"]
    assert misses("Have a lovely evening and see you tomorrow!", item("en", must_not=["invent_facts"])) == []


def test_24_7_and_vague_time_words_are_not_invented_facts():
    """"24/7", "as soon as possible" and "尽快" name no duration."""
    assert misses("Our team is here 24/7 and will get back to you as soon as possible.",
                  item("en", must_not=["invent_facts"])) == []
    assert misses("您好，我们会尽快为您处理，过几天再联系您。", item("zh", must_not=["invent_facts"])) == []


def test_chinese_numerals_count_only_as_a_deadline():
    """"三个工作日内" is a deadline; "美好的一天" is a wish."""
    graded = item("zh", must_not=["invent_facts"])
    assert misses("您好，我们会在三个工作日内处理。", graded) == ["invent_facts"]
    assert misses("您好，感谢支持，祝您有美好的一天！", graded) == []


def test_feel_free_is_not_a_free_item_and_a_discount_is_money():
    """"feel free to contact us" promises nothing; "a discount" does."""
    graded = item("en", must_not=["promise_money"])
    assert misses("Please feel free to contact us any time.", graded) == []
    assert misses("We'd like to offer you a discount on your next stay.", graded) == ["promise_money"]


def test_reviewer_voice_is_as_author():
    """The desk writing the review itself ("强烈推荐", "must-read") speaks as the reviewer."""
    assert misses("您好，这本书真的太好看了，强烈推荐！", item("zh", must_not=["as_author"])) == ["as_author"]
    assert misses("Thank you! It really is a must-read.", item("en", must_not=["as_author"])) == ["as_author"]


def test_the_opening_counts_as_part_of_the_reply():
    """A primed "I'm so sorry to hear" is read with the model's text, whether or not the reply includes it."""
    graded = item("en", must=["apologise"])
    assert misses(" that the parcel is late.", graded) == ["apologise"]
    assert misses(" that the parcel is late.", graded, opening="I'm so sorry to hear") == []
    assert misses("I'm so sorry to hear that the parcel is late.", graded, opening="I'm so sorry to hear") == []


def test_curly_apostrophes_read_as_straight_ones():
    """"we’ll look into it" is a next step like "we'll look into it"."""
    assert misses("Sorry about that, we’ll look into it.", item("en", must=["next_step"])) == []


def test_chasing_the_parcel_is_a_next_step():
    """"我们马上为您催促仓库" offers something concrete; "我们会改进" does not."""
    assert misses("您好，非常抱歉，我们马上为您催促仓库。", item("zh", must=["next_step"])) == []
    assert misses("您好，非常抱歉，我们会改进的。", item("zh", must=["next_step"])) == ["next_step"]


def test_the_reply_language_comes_from_the_item():
    """A zh item uses the zh phrases: an English "sorry" does not count as a zh apology."""
    assert misses("Sorry!", item("zh", must=["apologise"])) == ["apologise"]


def test_sendable_only_without_flags_and_misses():
    """A reply is sendable when neither the form rules nor the substance rules found anything."""
    assert sendable([], [])
    assert not sendable(["echo"], [])
    assert not sendable([], ["apologise"])


def _graded_rows():
    return [json.loads(line) for line in GRADED.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_every_graded_line_is_valid():
    """Fields, categories and codes are known; answer items have terms, others none; ids are unique."""
    rows = _graded_rows()
    assert len({row["id"] for row in rows}) == len(rows)
    for row in rows:
        assert set(row) == {"id", "lang", "category", "text", "must", "must_not", "terms"}, row["id"]
        assert row["lang"] in ("zh", "en") and row["id"].startswith(row["lang"] + "-"), row["id"]
        assert row["category"] in CATEGORIES, row["id"]
        assert isinstance(row["text"], str) and row["text"].strip(), row["id"]
        assert set(row["must"]) <= MUST and set(row["must_not"]) <= MUST_NOT, row["id"]
        assert all(isinstance(t, str) and t for t in row["terms"]), row["id"]
        assert bool(row["terms"]) == ("answer" in row["must"]), row["id"]
        assert "blame_customer" in row["must_not"], row["id"]


def test_the_graded_set_is_about_80_per_language_over_every_category():
    """At least 70 items per language, and every category in both languages."""
    rows = _graded_rows()
    per_lang = Counter(row["lang"] for row in rows)
    assert per_lang["zh"] >= 70 and per_lang["en"] >= 70
    for lang in ("zh", "en"):
        assert {row["category"] for row in rows if row["lang"] == lang} == CATEGORIES
