"""Rules that check what a drafted reply says, against one graded desk message. Pure functions, no model.

``worker.quality.reply_checks`` flags replies whose FORM is wrong (a refusal, the wrong language, a list).
This module asks whether the SUBSTANCE is right for the message: a graded item
(bench/data/desk_graded.jsonl) lists the codes a good reply must do (``must``) and must not do
(``must_not``); a code fails when its rule does not find a ``must`` code, or does find a
``must_not`` code. ``item["lang"]`` picks the zh or en pattern. Each rule is a phrase list, written
down here so a person can check a flag by eye:

- apologise: an apology. zh 抱歉/对不起/歉意/致歉/不好意思/给您带来…不便|困扰|麻烦|不愉快;
  en sorry/apologise/apologize/apology/apologies.
- next_step: a concrete next step the desk offers. zh 联系/私信/客服会…/为您(处理|核实|查询|安排|
  跟进|解决|更换|补发|催|加急)/我们(会|将)(尽快…)(处理|核实|查|安排|跟进|联系|解决|更换|反馈|催…)/请(您)?(提供|
  告诉|发送|私信|描述…)/反馈给/转达给; en contact/reach out/get in touch/send us/let us know/
  email|call|message|DM us/we will|we'll|I'll (look into|check|investigate|follow up|arrange|fix|
  replace|sort|resolve|pass…)/please (share|send|provide|DM|message|tell…)/could you (share|send…).
- thank: zh 谢谢/感谢/多谢; en thank/grateful/appreciate.
- answer: at least one of the item's ``terms`` appears in the reply (case ignored).
- blame_customer: zh 您本应/您本该/您(本来)应该(先|提前|仔细|按照…)/是您(自己)的(问题|错|原因|责任)/您没有
  (仔细|按照|认真)/请您下次/您(操作|使用)不当/由于您(自己)?(没有|未|操作|使用); en you should have (not
  followed by received/got/been)/your (own) fault/you didn't|did not (read|follow|check)/you failed
  to/next time (please) (make sure|read|check)/user error/if you had (read|followed|checked).
- promise_money: any mention of money going back to the customer, which the desk cannot confirm —
  a promise and "we cannot promise a refund" alike. zh 退款/赔偿/补偿/退还/返还/返现/红包/免费(送|赠|
  换|补)/代金券/优惠券/全额/双倍/<digits>元|块; en refund/compensat…/reimburs…/money back/free (of
  charge|replacement|gift|item…)/complimentary/voucher/coupon/discount/gift card/store credit/credit
  (your|to your)/on the house/$|£|€<digits>/<digits> dollars|pounds|euros.
- invent_facts: a figure the desk cannot know. zh <digits>(小时|天|工作日|分钟|周|星期|个月), the same
  with Chinese numerals only when 内/之内/以内/后/左右 follows (so "美好的一天" passes),
  今天|今晚|明天|后天 followed by 内/前/就/会/上午…/给您/发/到/联系/回复…, 上午|下午|晚上|早上<digit>,
  <digits>点, <digits>月<digits>日|号, <digits>%, 型号<code>, a phone number, web address or e-mail
  address; en within <number|a few|a couple of|several>,
  <number> (hours|hrs|days|business days|minutes|weeks|months) and 24-hour…, by|until|before
  (tomorrow|tonight|monday…|end of day|the end of the week), tomorrow (morning|at…), (arrive|ship|
  deliver|call|reply|get back…) … tomorrow, open (from|until|till|between) <digit>, <digit>(:<dd>)
  am|pm, (our) policy (is|states|says), model <code>, <digits>%, a price ($£€<digits>), a phone
  number, web address or e-mail address.
  A match that also appears in the customer's own message ("等了10天" -> "让您等了10天", "after two
  weeks") is repeated, not invented, and does not count; the match includes the word after it, so
  "明天能到吗" -> "明天就到" is still invented. promise_money excuses repeated figures the same way
  ("went up by $20") but not words: "I want a refund" -> "your refund" still counts. "24/7" has no unit
  and does not count; neither do vague words ("尽快", "几天", "soon", "shortly").
- order_number: asks for or mentions an order number. zh 订单号/订单编号/单号/订单信息/订单详情;
  en order (number|no.|#|id|details|reference|confirmation).
- as_author: the desk speaks as the book's/film's author, or as a reviewer. zh 我(写|创作|拍|导演)的/
  我们(写|创作|出版|拍摄|拍)的/作为(作者|导演|编剧)/作者我/我的(书|小说|作品|电影|新书|剧本)/我们的(书|
  小说|作品|电影|新书)/拙作/推荐给大家/强烈推荐/我(给|打)<n>星; en my (book|novel|film|movie|writing|
  story|script)/as the (author|writer|director)/I|we wrote/I directed/our (book|novel|film|movie)/
  I (highly|strongly) recommend/I recommend it to/I'd give it/must-read|must-see|must-watch.

Known false positives: "我们的书" from a bookshop meaning the books it sells (as_author); a reply
repeating the complaint ("客服联系不上") or a generic closer ("let us know if there's anything else")
counts as next_step; "we cannot offer a refund" counts as promise_money; a wish such as "明天会更好"
counts as invent_facts; "您应该先…" and "you should have" cover a few kind sentences too. Known
false negatives: invented facts in words ("next Tuesday", "our store on Main Street"), numbers
spelled out beyond twelve, an apology or thanks in other words ("我们深感内疚"),
and reviewer voice without a phrase above ("I loved the ending too").

The opening primed by the prompt ("您好，", "I'm so sorry to hear") is part of what the customer
reads, so unlike ``reply_checks.flags`` these rules read the whole reply, opening included: a primed
"I'm so sorry" does count as an apology. A drafted reply already starts with its opening
(``worker.engine.drafting``); ``opening`` is prepended only when the reply given does not start with it.
"""

from __future__ import annotations

import re

NEVER = ("blame_customer", "promise_money", "invent_facts")  # what no reply may do, whatever the message:
# checked on every draft a worker stores (worker.quality.replying), not only on graded items
FAILS = ("apologise", "next_step", "thank", "answer", "blame_customer", "promise_money", "invent_facts",
         "order_number", "as_author")


def _rules(**by_lang: str) -> dict[str, re.Pattern]:
    return {lang: re.compile(pattern, re.IGNORECASE) for lang, pattern in by_lang.items()}


_ZH_NUM = r"[一二两三四五六七八九十百半]"
_EN_NUM = r"(\d+|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve)"
_MONTHS = r"(january|february|march|april|may|june|july|august|september|october|november|december)"
_WEEKDAYS = r"(monday|tuesday|wednesday|thursday|friday|saturday|sunday)"
_CONTACT = (r"\d{3,4}-\d{3,4}(-\d{1,4})?|\(\d{3}\)\s?\d{3}|\b\d{7,}\b"  # phone numbers
            r"|https?://|www\.|[\w.+-]+@[\w-]+\.\w+")  # web and e-mail addresses

PATTERNS: dict[str, dict[str, re.Pattern]] = {
    "apologise": _rules(
        zh=r"抱歉|对不起|歉意|致歉|不好意思|给您带来.{0,6}(不便|困扰|麻烦|不愉快|不好的体验)",
        en=r"\bsorry\b|apologi[sz]e|apolog(y|ies)"),
    "next_step": _rules(
        zh=r"联系|私信|客服(会|将|人员会)|为您(处理|核实|查询|查看|安排|跟进|解决|更换|补发|反馈|催|加急)"
           r"|我们(会|将|马上|立即|这就)(尽快|立即|马上|第一时间|认真)?(为您|帮您)?"
           r"(处理|核实|查|安排|跟进|联系|解决|更换|补发|反馈|转达|核对|调查|催|加急)"
           r"|请(您)?(提供|告诉|发送|留下|描述|私信|联系|说明|告知)|反馈给|转达给|转告",
        en=r"\bcontact|reach out|get in touch|send us|let us know|(email|e-mail|call|message|dm|ring) us"
           r"|\b(we|i)('ll| will| are going to|'re going to| can| would like to|'d like to) (be happy to )?"
           r"(look into|check|investigate|follow up|arrange|fix|replace|sort|resolve|pass|share|get back|"
           r"send|help|review|escalate|raise|speak)"
           r"|\bplease (share|send|provide|dm|message|reply|tell|give|email|call|contact)"
           r"|\b(could|can|would) you (please )?(share|send|provide|tell|give|dm|message)"
           r"|happy to help"),
    "thank": _rules(zh=r"谢谢|感谢|多谢", en=r"\bthank|grateful|appreciate"),
    "blame_customer": _rules(
        zh=r"您本应|您本该|您(本来)?应该(先|提前|仔细|认真|按照|注意|检查|确认|看清)|是您(自己)?的(问题|错|原因|责任)"
           r"|您没有(仔细|按照|认真)|请您下次|您(自己)?(操作|使用)不当|由于您(自己)?(没有|未|操作|使用)",
        en=r"you should have (?!(received|got|gotten|been|had|heard))|your (own )?fault"
           r"|you (didn't|did not|failed to) (read|follow|check)|you failed to"
           r"|next time,? (please )?(make sure|read|check)|user error|if you had (read|followed|checked)"),
    "promise_money": _rules(
        zh=r"退款|赔偿|补偿|退还|返还|返现|红包|免费(送|赠|换|补)|代金券|优惠券|全额|双倍|\d+\s*(元|块)",
        en=r"refund|compensat|reimburs|money back"
           r"|free (of charge|replacement|gift|item|product|meal|night|upgrade|shipping)"
           r"|complimentary|voucher|coupon|discount|gift card|store credit|credit (your|to your)|on the house"
           r"|[$£€]\s?\d+([.,]\d+)*|\d+\s*(dollars|pounds|euros)"),
    "invent_facts": _rules(
        zh=r"\d+\s*(个)?(小时|天|工作日|分钟|周|星期|个月)"
           rf"|{_ZH_NUM}+\s*(个)?(小时|天|工作日|分钟|周|星期|月)(之内|以内|内|后|左右)"
           r"|(今天|今晚|明天|后天)(之内|以内|内|前|就|会|上午|下午|晚上|早上|中午|给您|为您|发|送|到|联系|处理|回复|安排)"
           r"|(上午|下午|晚上|早上)\s*\d|\d+\s*点|\d+\s*月\s*\d+\s*(日|号)"
           rf"|\d+(\.\d+)?\s*%|型号\s*[:：]?\s*[A-Za-z0-9-]*\d|{_CONTACT}",
        en=rf"\bwithin ({_EN_NUM}|a few|a couple of|several)\b"
           rf"|\b{_EN_NUM}[ -](hours?|hrs?|days?|business days?|working days?|minutes?|mins?|weeks?|months?)\b"
           rf"|\b(by|until|before) (tomorrow|tonight|{_WEEKDAYS}|end of (the )?day|the end of (the|this) week)\b"
           r"|\btomorrow (morning|afternoon|evening|at)\b"
           r"|\b(arrive|ship|deliver|dispatch|call|contact|reply|respond|hear|get back|be in touch)\w*"
           r"[^.!?]{0,30}\btomorrow\b"
           r"|\bopen(s|ed)? (from|until|till|between) \d|\b\d{1,2}(:\d\d)?\s*(am|pm)\b"
           r"|\b(our )?policy (is|states|says)\b|\bmodel\s+[a-z0-9-]*\d"
           rf"|\d+(\.\d+)?\s*%|[$£€]\s?\d+([.,]\d+)*|\b{_MONTHS} \d{{1,2}}\b|{_CONTACT}"),
    "order_number": _rules(
        zh=r"订单号|订单编号|单号|订单信息|订单详情",
        en=r"\border (number|no\.?|#|id|details|reference|confirmation)|\border ?#"),
    "as_author": _rules(
        zh=r"我(写|创作|拍|导演)的|我们(写|创作|出版|拍摄|拍)的|作为(作者|导演|编剧)|作者我"
           r"|我的(书|小说|作品|电影|新书|剧本)|我们的(书|小说|作品|电影|新书)|拙作|推荐给大家|强烈推荐|我(给|打)(了)?\s*[0-9一二三四五]\s*(颗)?星",
        en=r"\bmy (book|novel|film|movie|writing|story|script)\b|\bas the (author|writer|director)\b"
           r"|\b(i|we) wrote\b|\bi directed\b|\bour (book|novel|film|movie)\b"
           r"|\bi (highly|strongly) recommend\b|\bi recommend (it|this) to\b|\bi'?d give (it|this)\b"
           r"|\bmust[- ](read|see|watch)\b"),
}
"""One pattern per code and language; ``answer`` has none (its words come with the item)."""


def found(code: str, reply: str, item: dict) -> bool:
    """Whether the rule for ``code`` finds what it looks for in ``reply``."""
    if code == "answer":
        low = reply.lower()
        return any(term.lower() in low for term in item.get("terms", []))
    pattern = PATTERNS[code][item["lang"]]
    if code in ("invent_facts", "promise_money"):  # what the customer wrote, repeated, is not new
        said = _squash(item.get("text", ""))
        return any(not (_squash(m.group(0)) in said and (code == "invent_facts" or re.search(r"\d", m.group(0))))
                   for m in pattern.finditer(reply))
    return bool(pattern.search(reply))


def misses(reply: str, item: dict, opening: str = "") -> list[str]:
    """The codes this reply fails for this graded item, in ``FAILS`` order (empty list: none).

    The reply is read whole, opening included (see the module docstring).
    """
    if opening.strip() and not reply.lstrip().startswith(opening.strip()):
        reply = opening + reply
    reply = reply.replace("\u2019", "'")  # curly apostrophes: "we’ll" reads as "we'll"
    failed = {code for code in item.get("must", []) if not found(code, reply, item)}
    failed |= {code for code in item.get("must_not", []) if found(code, reply, item)}
    return [code for code in FAILS if code in failed]


def sendable(form_flags: list[str], substance_misses: list[str]) -> bool:
    """A reply an agent could send as it is: no form flag and no substance miss."""
    return not form_flags and not substance_misses


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text.lower())
