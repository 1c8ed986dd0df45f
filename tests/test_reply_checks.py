"""The reply-quality rules on constructed replies (pure functions, no model)."""

from __future__ import annotations

import pytest

from worker.quality.reply_checks import flags

CASES = [
    # (reply, message, lang, expected flags)
    ("很抱歉给您带来不便，我们会尽快为您更换。", "收到的杯子是碎的。", "zh", []),
    ("抱歉，我不能为您服务。", "你们的客服太差了", "zh", ["refusal"]),
    ("您好，我感到非常抱歉，但我不能为您提供不礼貌或有争议的信息。", "这个天气真让人烦躁。", "zh", ["refusal"]),  # moodq demo
    ("您好，我不能为您提供任何关于您的评论或看法。", "没什么实在的方法", "zh", ["refusal"]),
    ("对不起，我无法协助完成这个请求。", "东西坏了", "zh", ["refusal", "not_addressing"]),
    ("作为一个AI，我没有感情，但我理解您的心情。", "太失望了", "zh", ["refusal"]),
    ("I'm sorry, but I can't assist with that.", "My order never arrived.", "en", ["refusal", "not_addressing"]),
    ("As an AI, I understand your frustration with the delay.", "Late again!", "en", ["refusal"]),
    ("As an artificial language model, I don't have feelings like humans do, but I hear you.", "Rubbish.", "en",
     ["refusal"]),
    ("I'm sorry you feel that way. I don't have emotions, but your order matters to us.", "Awful.", "en", ["refusal"]),
    ("I'm just a virtual assistant, but I will pass this on to the team for you.", "Fix it!", "en", ["refusal"]),
    ("您好，我不能为您提供任何涉及版权或知识产权的内容。", "送的Office用不了", "zh", ["refusal"]),
    ("作为人工智能助手，我没有情感，但我理解您的不满。", "太差了", "zh", ["refusal"]),
    ("您好，我不能帮助您进行这种不道德的行为。如果您有其他问题，请告诉我。", "骗子公司，大家别上当。", "zh", ["refusal"]),
    ("您好，非常抱歉，但我不能支持或鼓励任何有害的行为。", "你们到底还想不想做生意了？", "zh", ["refusal"]),
    ("I'm so sorry the model you ordered came in the wrong colour; we will swap it for you.", "Wrong colour!", "en", []),
    ("Thanks so much for the kind words, we are glad you love it!", "Love it!", "en", []),
    ("Thank you for your message, we will look into it.", "包装破了，很不满意。", "zh", ["wrong_language"]),
    ("非常感谢您的反馈！", "Great service, thank you!", "en", ["wrong_language"]),
    ("您说房间有一股霉味，空调也是坏的，前台态度冷淡，我们很抱歉。", "房间有一股霉味，空调也是坏的，前台态度冷淡。",
     "zh", ["echo"]),
    ("The user is unhappy about the late delivery.", "Delivery was late.", "en", ["not_addressing"]),
    ("这条评论表达了对产品质量的不满。", "质量太差了", "zh", ["not_addressing"]),
    ("用户表示对服务不满意，建议改进。", "服务太差", "zh", ["not_addressing"]),
    ("请稍后再试，或者咨询专业的医生。", "我感觉很累", "zh", ["not_addressing"]),
    ("I'm sorry to hear that. Here is what you can do:\n1. Restart it\n2. Check the cable\n3. Call us",
     "It stopped working.", "en", ["loop"]),
    ("您好您好您好您好您好您好您好您好您好您好您好您好您好您好您好您好您好您好您好您好您好您好", "你好", "zh", ["loop"]),
    ("   ", "anything", "en", ["empty"]),
    ("I'm so sorry. If you are worried, it's best to speak directly to the customer as \"you\".", "Smells burnt.", "en",
     ["prompt_leak"]),
    ("您好，非常抱歉。我会直接对这位顾客说话，称呼「您」。", "太慢了", "zh", ["not_addressing", "prompt_leak"]),
]


@pytest.mark.parametrize("reply, text, lang, expected", CASES)
def test_rules_flag_exactly_what_they_say(reply, text, lang, expected):
    assert sorted(flags(reply, text, lang)) == sorted(expected)


def test_a_primed_opening_does_not_count_as_addressing_the_customer():
    assert flags("您好，这本书的质量确实一般。", "质量一般", "zh", opening="您好，") == ["not_addressing"]
    assert flags("您好，给您带来不便很抱歉。", "质量一般", "zh", opening="您好，") == []


def test_a_short_quote_is_not_an_echo():
    """Naming the product the customer named is not copying the message back."""
    assert "echo" not in flags("Sorry the blender broke, you will get a new one.", "The blender broke after a week "
                               "of light use and the shop will not answer.", "en")
