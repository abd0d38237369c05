"""pedray chat demo: a Gradio chat in front of the pedray Serve app, over HTTP with the OpenAI client.

    python ui/app.py --api http://127.0.0.1:8000/v1 [--port 7860] [--host 127.0.0.1]

Streams answers, keeps the multi-turn history, offers example pediatric questions, names in Chinese the
route and expert that answered each message, and has a stop button. The server adds the disclaimer and
triages the conversation; its notice is shown as a banner above the chat, not inside the answer: red for
an urgent-care notice, amber for "see a doctor today". The page states the disclaimer too.
"""

from __future__ import annotations

import argparse
import html
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
from openai import OpenAI  # noqa: E402

EXAMPLES = [
    "孩子发烧38.5度，精神还可以，需要马上吃退烧药吗？",
    "一岁宝宝拉肚子两天了，怎么判断有没有脱水？",
    "孩子咳嗽一周，晚上咳得厉害，应该注意什么？",
    "孩子高烧后突然抽搐，现在怎么办？",
]
NOTICE = ("pedray 是研究用的儿科问答助手，回答仅供参考，不能代替医生的面诊。"
          "孩子出现呼吸困难、抽搐、叫不醒等情况时，请立即就医或拨打120。")


ROUTES = {"medkqa": "知识问答", "evidiag": "诊断", "trerecom": "治疗建议", "dialogue": "多轮对话", "general": "通用"}
EXPERTS = {**ROUTES, "model": "通用模型", "mouse": "MoUSE 专家混合"}
BANNER = ('<div role="alert" style="background:{};color:#fff;padding:14px 18px;border-radius:10px;'
          'font-size:1.05em;line-height:1.6;margin-bottom:8px">{}</div>')
COLOURS = {"urgent": "#b91c1c", "soon": "#b45309"}  # red: emergency now; amber: a doctor today


def banner(triage: dict) -> str:
    """The triage's notice as a banner above the chat: red when urgent, amber for "see a doctor today"
    (empty when nothing is raised)."""
    level = triage.get("level") or ("urgent" if triage.get("urgent") else "")
    if level not in COLOURS or not triage.get("notice"):
        return ""
    lines = html.escape(triage["notice"]).split("\n")
    return BANNER.format(COLOURS[level], "<strong>" + lines[0] + "</strong><br>" + "<br>".join(lines[1:]))


def build(api: str, model: str = "pedray", api_key: str = "none", max_tokens: int = 256) -> gr.Blocks:
    client = OpenAI(base_url=api, api_key=api_key, max_retries=1, timeout=300)

    def chat(message: str, history: list[dict]):
        """Stream one answer and the banner; the answer's last line names the route and expert in Chinese.

        The server puts the triage's notice first in the answer's text (for API clients); here it is shown
        in the banner instead, so it is taken off the answer."""
        messages = [{"role": m["role"], "content": m["content"]} for m in history
                    if m.get("role") in ("user", "assistant") and isinstance(m.get("content"), str)]
        messages.append({"role": "user", "content": message})
        text, answer, info = "", "", {}
        stream = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens, stream=True)
        for part in stream:
            info = (part.model_extra or {}).get("pedray") or info
            if part.choices and part.choices[0].delta.content:
                text += part.choices[0].delta.content
                notice = (info.get("triage") or {}).get("notice") or ""
                answer = text[len(notice):].lstrip("\n") if notice and text.startswith(notice) else text
                yield answer, banner(info.get("triage") or {})
        if info:
            route, expert = info.get("route"), info.get("expert")
            answer += f"\n\n*路由：{ROUTES.get(route, route)} · 专家：{EXPERTS.get(expert, expert)}*"
        yield answer, banner(info.get("triage") or {})

    with gr.Blocks(title="pedray 儿科助手") as demo:
        gr.Markdown(f"## pedray 儿科助手\n{NOTICE}")
        alert = gr.HTML("", elem_id="pedray-urgent")
        gr.ChatInterface(chat, examples=EXAMPLES, cache_examples=False, api_name="chat", additional_outputs=[alert],
                         chatbot=gr.Chatbot(height=480, label="对话"),
                         textbox=gr.Textbox(placeholder="请描述孩子的情况：年龄、症状、持续多久……", submit_btn=True))
    return demo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--api", default="http://127.0.0.1:8000/v1", help="the pedray Serve app's /v1 URL")
    parser.add_argument("--model", default="pedray")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--max-tokens", type=int, default=256)
    args = parser.parse_args()
    demo = build(args.api, args.model, os.environ.get("PEDRAY_API_KEY", "none"), args.max_tokens)
    demo.queue().launch(server_name=args.host, server_port=args.port, show_error=True)


if __name__ == "__main__":
    main()
