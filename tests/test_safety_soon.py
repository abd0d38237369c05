"""The second level of triage: "see a doctor today" (signs.yaml's `level: soon`), below the urgent one."""

from __future__ import annotations

import pytest

from pedray.safety import learned
from pedray.safety.evaluate import evaluate, evaluate_soon
from pedray.safety.signs import triage
from pedray.serve.safety import wrap
from pedray.vocab import DISCLAIMER, SOON_NOTICE, URGENT_NOTICE


def _user(*turns: str) -> list[dict]:
    return [{"role": "user", "content": turn} for turn in turns]


@pytest.mark.parametrize("text, sign", [
    ("宝宝4个月，发烧39.2度", "infant_high_fever"),       # 3-6 months and 39 ℃: below 3 months it is urgent
    ("宝宝3个月零10天，体温39.1", "infant_high_fever"),
    ("孩子已经烧了整整三天了，退烧药一停就又烧", "fever_three_days"),
    ("连续三天发烧，晚上最高39度", "fever_three_days"),
    ("孩子高烧前一直打寒战，牙齿都在打架", "fever_rigors"),
    ("两岁宝宝被拉了一下手之后，那只胳膊就一直垂着不肯抬", "limb_not_used"),
    ("孩子右脚踝肿起来了，不愿意踩地", "limb_not_used"),
    ("孩子吐了好几次，小便比平常少多了", "urine_falling"),
    ("宝宝发热38.7，喝奶只喝几口就不喝了", "feeding_poorly_fever"),
    # round 10 of fresh phrasings, each missed before its fix
    ("宝宝4月龄，腋温39.0", "infant_high_fever"),                 # "4月龄" is an age
    ("六个月宝宝发高烧39度2，有点蔫", "infant_high_fever"),          # "六个月" is up to the seventh month
    ("小家伙发烧从周一到今天周四了，还没退", "fever_three_days"),     # weekdays counted
    ("孩子反复烧了72小时了", "fever_three_days"),
    ("儿子高热不退三天了", "fever_three_days"),                    # 高热 is a fever word
    ("孩子热度一直没下去，今天是第三天", "fever_days_told_later"),
    ("娃发着烧，刚才冷得直哆嗦", "fever_rigors"),
    ("孩子这两天走路一拐一拐的，说屁股疼", "limb_not_used"),
    ("四岁女儿说腿疼不肯走路，也没摔过", "limb_not_used"),
    ("儿子摔了一跤后手腕肿了，不让碰", "limb_not_used"),            # once "剧烈腹痛": tenderness is the belly's only
    ("孩子拉了一天水样便，到现在只尿了两次", "urine_falling"),
    ("宝宝吐了一上午，尿布比平时干", "urine_falling"),              # drier than usual, not dry: not the urgent sign
    ("宝宝腹泻三天，小便颜色很深，量也少", "urine_falling"),
    ("宝宝发热，吃奶不积极，一顿只喝了30毫升", "feeding_poorly_fever"),
    ("出生第五天的宝宝，脸和眼白有点黄", "newborn_jaundice"),
    # round 11, written after round 10's fixes
    ("三岁儿子的手肘被我拽了一下，现在胳膊不让动", "limb_not_used"),
    ("孩子又吐又拉，一天就尿了两回", "urine_falling"),
    ("满月前的宝宝皮肤发黄，今天第10天", "newborn_jaundice"),
    # round 13, written after rounds 10-12's fixes
    ("这次烧得时间长，周五开始的，今天周一了", "fever_three_days"),
    ("孩子发烧，说冷，裹着被子还在发抖", "fever_rigors"),
    ("小孩踝关节扭了，肿得很高，不能走路", "limb_not_used"),
    ("孩子一走路就喊髋关节疼，前两天感冒过", "limb_not_used"),
    ("宝宝的小腿有点肿，一碰就哭", "limb_not_used"),
    ("宝宝拉肚子，今天尿得明显少了", "urine_falling"),
    ("娃拉稀拉了两天，嘴唇有点干，尿黄", "urine_falling"),
    ("宝宝发烧后不爱喝奶了，一次就喝几十毫升", "feeding_poorly_fever"),
    ("新生儿出生十天了，身上还是黄，吃奶还行", "newborn_jaundice"),
])
def test_doctor_today_signs(text, sign):
    result = triage(_user(text))
    assert result.names == [sign] and result.level == "soon" and not result.urgent
    notice = result.notice()
    assert notice.startswith(SOON_NOTICE) and "需要就医的情况" in notice and URGENT_NOTICE not in notice
    assert result.to_dict()["level"] == "soon" and result.to_dict()["urgent"] is False


@pytest.mark.parametrize("text", [
    "孩子发烧38.5度两天了，怎么办？", "宝宝3个月，发烧38.2度", "孩子三天前发烧，现在已经退了", "孩子发烧三天后退烧，身上出了红疹子",
    "孩子不肯走路，老要抱", "宝宝最近吃奶少，是厌奶期吗", "孩子尿少正常吗", "儿子喜欢打哆嗦，冬天出门就抖",
    "宝宝五个月，体温37.8，正常吗", "宝宝7个月，发烧39度，玩得挺开心", "孩子从周一开始咳嗽，到周三好多了",
    "宝宝出生两个月了，脸色有点黄，是不是缺铁", "孩子鼻涕有点黄，咳嗽", "新生儿黄疸多少天能退", "宝宝拉肚子，尿也不少，精神挺好",
    "孩子脚崴了一下，不肿，走路正常", "宝宝夏天出汗多，尿比平时少一点，吃喝玩都正常", "孩子发烧，嘴唇有点干",
])
def test_near_misses_get_no_notice(text):
    assert triage(_user(text)).level == ""


def test_an_urgent_sign_wins_and_the_notice_has_one_level():
    result = triage(_user("孩子发烧三天了", "现在叫不醒"))
    assert result.level == "urgent" and result.names == ["hard_to_wake"]  # the fever's 3 days are not listed
    assert result.notice().startswith(URGENT_NOTICE) and SOON_NOTICE not in result.notice()
    assert triage(_user("宝宝两个月，发烧38.2度")).names == ["infant_fever"]  # under 3 months: urgent


def test_an_arched_neck_with_fever_is_urgent_and_a_dry_nappy_still_is():
    assert triage(_user("宝宝这两天特别烦躁，发烧，脖子往后仰")).names == ["neck_arching"]
    assert triage(_user("宝宝脖子往后仰着睡，没发烧")).level == ""
    assert triage(_user("宝宝吐了一上午，尿布一直是干的")).names == ["dehydration"]


def test_the_classifier_judges_only_chats_no_rule_explains(monkeypatch):
    monkeypatch.setattr(learned, "score", lambda messages: 1.0)  # a classifier that calls everything urgent
    assert triage(_user("宝宝4个月，发烧39.2度")).level == "soon"
    assert triage(_user("孩子今天有点不对劲")).names == ["learned"]


def test_the_answer_carries_the_soon_notice_first_and_the_disclaimer_last():
    text = wrap("多喝水，注意休息。", triage(_user("孩子发烧五天，精神还可以，要不要去医院")))
    assert text.startswith(SOON_NOTICE) and text.endswith(DISCLAIMER) and "多喝水" in text


def test_the_soon_cases_and_the_everyday_questions():
    soon = evaluate_soon()
    assert soon["soon_cases"] >= 30 and soon["at_soon"] == soon["soon_cases"], (soon["escalated"], soon["missed"])
    assert soon["everyday_cases"] >= 20 and soon["everyday_noticed"] == []
    test = evaluate("test")["soon_on_everyday"]  # the held-out everyday questions: a few long fevers, no more
    assert test["rate"] <= 0.05, test["cases"]


def test_the_chat_ui_shows_the_level_in_its_banner_colour():
    pytest.importorskip("gradio")
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("pedray_ui", Path(__file__).parents[1] / "ui" / "app.py")
    ui = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ui)
    soon = ui.banner(triage(_user("宝宝4个月，发烧39.2度")).to_dict())
    urgent = ui.banner(triage(_user("宝宝两个月，发烧38.2度")).to_dict())
    assert ui.COLOURS["soon"] in soon and SOON_NOTICE in soon and ui.COLOURS["urgent"] in urgent
    assert ui.banner(triage(_user("孩子有点咳嗽")).to_dict()) == ""


@pytest.mark.parametrize("turns, level, names", [
    (["宝宝两个月", "今天有点烫"], "urgent", ["infant_fever"]),          # "烫" is a parent's word for fever
    (["宝宝五个月，身上滚烫，39.3度"], "soon", ["infant_high_fever"]),
    (["孩子两岁，发烧", "已经第四天了"], "soon", ["fever_days_told_later"]),  # how long, told in a later turn
    (["孩子两岁咳嗽", "已经第四天了"], "", []),                           # ... of a cough: nothing
    (["宝宝7个月", "发烧38.6度", "今天吃奶只有平时一半"], "soon", ["feeding_poorly_fever"]),
    (["孩子三岁", "咳嗽四天了", "不发烧"], "", []),
    (["宝宝两个月，手被热水烫了一下", "有点红，没起泡"], "", []),             # a scald's 烫 is not a fever
])
def test_fever_words_and_durations_across_turns(turns, level, names):
    messages = []
    for turn in turns:
        messages += [{"role": "user", "content": turn}, {"role": "assistant", "content": "好的，请再说说孩子的情况。"}]
    result = triage(messages[:-1])
    assert (result.level, result.names) == (level, names)
