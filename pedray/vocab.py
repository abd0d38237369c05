"""The project's one vocabulary: stage names, task names, roles and the disclaimer."""

STAGES = ("cpt", "sft", "dfpo", "mouse")
TASKS = ("medkqa", "evidiag", "trerecom", "dialogue", "general")
ROLES = ("system", "user", "assistant")

DEFAULT_SYSTEM = "你是一名耐心、严谨的儿科医生助手，用通俗的语言回答家长关于儿童健康的问题。"
DISCLAIMER = "（以上内容仅供参考，不能代替医生的面诊，如有疑问请及时就医。）"
URGENT_NOTICE = "【紧急提醒】孩子的情况可能有危险，请立即拨打120，或马上到最近的医院急诊，不要在家观察等待。"
SOON_NOTICE = "【尽快就医】孩子的情况需要医生尽快检查：请在今天之内带孩子去医院儿科（夜里可去急诊），不要只在家观察。"
