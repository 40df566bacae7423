"""The dashboard's two languages and the site's conventions for money, dates and times.

Texts are written in English in the templates (``_("Balance")``); ``ZH`` gives their Chinese. A text without a
Chinese entry shows in English (a unit test checks that every text of the templates has one). Times are shown in
the site's time zone; money in yuan, grouped by thousands.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo

__all__ = ["LANGUAGES", "Locale", "ZH", "pick_language"]

LANGUAGES = ("zh", "en")
LANG_COOKIE = "mg_lang"

ZH: dict[str, str] = {
    # the frame
    "Operations": "运营中心", "Overview": "总览", "Accounts": "账户", "Meters": "电表", "Alarms": "告警",
    "Sign out": "退出", "Sign in": "登录", "API key": "API 密钥", "Signed in as": "当前用户",
    "Role": "角色", "Live": "实时", "Offline": "离线", "Language": "语言", "Site time": "站点时间",
    "Skip to content": "跳到正文", "Main navigation": "主导航",
    "Sign in with an API key. The key is checked once and kept only as a session cookie.":
        "使用 API 密钥登录。密钥只校验一次，之后只保存为会话 Cookie。",
    "Unknown API key.": "未知的 API 密钥。", "Too many failed sign-ins; try again later.": "登录失败次数过多，请稍后再试。",
    "Your session has ended; sign in again.": "会话已结束，请重新登录。",
    "The form has expired; please try again.": "表单已过期，请重试。",
    # overview
    "Accounts by state": "账户状态分布", "About to be cut off": "即将断电", "Deferred disconnects": "暂缓断电",
    "Meters offline or stale": "离线或数据陈旧的电表", "Commands pending or failed": "待执行或失败的命令",
    "Undelivered notices": "未送达的通知", "Open alarms": "未处理告警", "Today's readings by bus": "今日各总线抄表情况",
    "Final warning": "最终提醒", "Notice ends": "通知期结束", "Reason": "原因", "Detail": "详情", "Until": "截至",
    "None": "无", "and %(n)s more": "另有 %(n)s 条", "Bus": "总线", "Meters on bus": "电表数", "Read": "已抄",
    "On time": "按时", "Success rate": "成功率", "Failed polls": "失败轮询", "closed": "已销户", "As of": "截至",
    # states and kinds
    "connected": "供电中", "disconnected": "已断电", "disconnecting": "断电中", "reconnecting": "复电中",
    "armed": "待用户合闸", "disconnect_failed": "断电失败", "reconnect_failed": "复电失败",
    "online": "在线", "degraded": "通信不稳", "offline": "离线", "unknown": "未知", "stale": "数据陈旧",
    "open": "未处理", "queued": "排队中", "sending": "发送中", "sent": "已发送", "confirmed": "已确认",
    "failed": "失败", "superseded": "已取代", "cancelled": "已取消", "expired": "已过期", "withdrawn": "已撤回",
    "pending": "待发送", "delivered": "已送达", "acknowledged": "已确认收到", "resolved": "已解决",
    "protected": "保电", "operator_hold": "人工暂缓", "quarantined_reading": "读数隔离",
    "meter_offline": "电表离线", "readings_not_ok": "读数异常", "stale_reading": "读数过旧",
    "friendly_window": "友好时段", "notice_undelivered": "提醒未送达", "notice_period": "通知期内",
    "rate_limit": "断电限速", "critical": "严重", "warning": "警告", "info": "提示",
    "disconnect": "断电", "reconnect": "复电", "automatic": "自动", "operator": "人工", "billing": "计费",
    # ledger entries (gateway.domain.ledger.EntryKind) and credit levels (gateway.domain.account.CREDIT_STATES)
    "opening": "期初余额", "payment": "缴费", "reversal": "冲正", "charge": "电费", "emergency_credit": "应急额度",
    "repayment": "应急额度还款", "adjustment": "调账", "refund": "退款", "arrears": "欠费转债务",
    "ok": "正常", "warning1": "一级预警", "warning2": "二级预警（最终提醒）", "exhausted": "余额耗尽",
    "disconnect_point": "已到断电点",
    # alarm kinds (docs/alarms.md) and notice kinds (docs/notices.md)
    "meter_stale": "数据陈旧", "reading_quarantined": "读数隔离", "command_failed": "命令失败",
    "disconnect_refused": "断电被拒", "notice_failed": "通知失败", "tamper": "防窃电告警",
    "account_unreadable": "账户状态不可读", "outbox_overflow": "事件队列溢出",
    "low_balance_1": "余额不足提醒", "low_balance_2": "最终提醒", "payment_received": "缴费到账",
    "reconnected": "已复电", "final_warning_undelivered": "最终提醒未送达",
    # tables
    "Search": "搜索", "Account or meter id": "账户号或表号", "Meter or account id": "表号或账户号",
    "State": "状态", "Any": "全部", "Sort": "排序", "Filter": "筛选", "Balance": "余额", "Relay": "继电器",
    "Health": "通信", "Last reading": "最近读数", "Updated": "更新时间", "Account": "账户", "Meter": "电表",
    "Model": "型号", "Account status": "账户状态", "Previous": "上一页", "Next": "下一页", "%(first)s–%(last)s of %(total)s":
        "第 %(first)s–%(last)s 条，共 %(total)s 条", "Nothing matches.": "没有匹配的记录。",
    "ascending": "升序", "descending": "降序", "id": "编号", "balance": "余额", "updated": "更新时间",
    "health": "通信", "last_reading": "最近读数", "account": "账户", "Status": "状态",
    # one account / one meter
    "Account %(id)s": "账户 %(id)s", "Meter %(id)s": "电表 %(id)s", "Supply": "供电", "Credit": "信用等级",
    "Disconnect point": "断电点", "Reconnect at": "复电余额", "Emergency credit outstanding": "应急额度欠款",
    "Hold until": "暂缓至", "Guardrail holding a disconnect": "正在阻止断电的保护规则", "Tariff": "电价",
    "Consumption": "用电量", "Day": "日", "Week": "周", "Month": "月", "Ledger": "账本", "Commands": "命令",
    "Notices": "通知", "Events": "事件", "Kind": "类型", "Amount": "金额", "Balance after": "变动后余额",
    "Time": "时间", "Action": "操作", "Attempts": "尝试次数", "Last error": "最近错误", "Actor": "操作人",
    "Energy": "电量", "Power": "功率", "Reading": "读数", "Quarantined reading": "隔离中的读数",
    "Account of the meter": "所属账户", "Address": "地址", "Consecutive failures": "连续失败",
    "Last success": "最近成功", "Readings": "读数", "To": "发送至", "Channel": "渠道", "Subject": "主题",
    "Nothing to show.": "暂无记录。", "kWh": "千瓦时", "Energy used per period": "各时段用电量",
    "Protected (保电)": "保电", "yes": "是", "no": "否", "Created": "创建时间",
    # actions
    "Actions": "操作", "Disconnect": "断电", "Reconnect": "复电", "Emergency credit": "应急额度",
    "Hold disconnects": "暂缓断电", "Release hold": "解除暂缓", "Protect": "设为保电", "Release protection":
        "解除保电", "Accept reading": "接受读数", "Re-base meter": "重设基准", "Replace meter": "换表",
    "Acknowledge": "确认", "Resolve": "解决", "Confirm": "确认执行", "Cancel": "取消",
    "Confirm: %(what)s": "确认：%(what)s", "Reason (required)": "原因（必填）",
    "Amount in yuan (empty: the site's amount)": "金额（元，留空为站点默认）", "Hold until (site time)": "暂缓至（站点时间）",
    "Energy in Wh (empty: as read)": "电量（Wh，留空为读数）", "New baseline in Wh (empty: read now)":
        "新基准（Wh，留空为立即读取）", "New meter id": "新表号", "Modbus unit id": "Modbus 从站地址",
    "DL/T 645 address (12 digits)": "DL/T 645 地址（12 位）", "Old meter's final reading, Wh (empty: read now)":
        "旧表止码（Wh，留空为立即读取）", "New meter's initial reading, Wh (empty: read now)": "新表起码（Wh，留空为立即读取）",
    "What will happen": "执行后果", "The gateway refuses this now:": "网关目前拒绝此操作：",
    "Done: %(what)s": "已完成：%(what)s", "Refused: %(why)s": "被拒绝：%(why)s",
    "Command %(id)s queued.": "命令 %(id)s 已排队。",
    "Open the supply of meter %(id)s (relay open), confirmed by reading the relay back.":
        "断开电表 %(id)s 的供电（继电器断开），并回读继电器确认。",
    "Close the supply of meter %(id)s (relay closed), confirmed by reading the relay back.":
        "恢复电表 %(id)s 的供电（继电器闭合），并回读继电器确认。",
    "Grant emergency credit to account %(id)s (repaid from the next payment).":
        "为账户 %(id)s 发放应急额度（从下次缴费中扣回）。",
    "No automatic disconnect of account %(id)s before the time given.": "在指定时间前不自动断开账户 %(id)s。",
    "Automatic disconnects of account %(id)s are allowed again.": "恢复账户 %(id)s 的自动断电。",
    "Account %(id)s is never disconnected automatically.": "账户 %(id)s 将不会被自动断电。",
    "Account %(id)s may be disconnected automatically again.": "账户 %(id)s 可再次被自动断电。",
    "Bill the quarantined reading of meter %(id)s.": "按读数对电表 %(id)s 的隔离读数计费。",
    "Start meter %(id)s afresh from a new baseline (nothing billed across the jump).":
        "电表 %(id)s 从新基准重新开始计量（跳变部分不计费）。",
    "Replace meter %(id)s by a new meter on the same account, billing across the swap.":
        "将电表 %(id)s 换为同一账户下的新表，换表前后连续计费。",
    "Acknowledge alarm %(id)s: it stays until resolved.": "确认告警 %(id)s：在解决前保持显示。",
    "Resolve alarm %(id)s by hand.": "手动解决告警 %(id)s。",
    "The gateway allows it now.": "网关当前允许此操作。", "The role %(role)s may not do this.": "角色 %(role)s 无权执行此操作。", "Alarm": "告警", "Subject of the alarm": "告警对象",
    "Raised": "产生时间", "Severity": "级别", "Unresolved": "未解决", "All": "全部",
}


def pick_language(cookie: str | None, accept_language: str | None) -> str:
    """The cookie's language, else the browser's first of ours, else Chinese."""
    if cookie in LANGUAGES:
        return cookie  # type: ignore[return-value]
    for part in (accept_language or "").split(","):
        code = part.split(";")[0].strip().lower()[:2]
        if code in LANGUAGES:
            return code
    return "zh"


class Locale:
    """Texts and formats of one language in the site's time zone."""

    def __init__(self, lang: str, tz: ZoneInfo | dt.tzinfo) -> None:
        self.lang, self.tz = lang, tz
        self._texts = ZH if lang == "zh" else {}

    def text(self, message: str, **values: Any) -> str:
        out = self._texts.get(message, message)
        return out % values if values else out

    def term(self, code: str | None) -> str:
        """A state, reason or kind code in words (the code itself when it has none)."""
        if not code:
            return ""
        return self._texts.get(code, code.replace("_", " ")) if self.lang == "zh" else code.replace("_", " ")

    def status(self, code: str | None) -> str:
        """An account's status (``open`` is an account in service here, not an alarm's state)."""
        if not code:
            return ""
        return {"open": "正常", "closed": "已销户"}.get(code, code) if self.lang == "zh" else code

    def relay(self, code: str | None) -> str:
        """A relay's state (``open`` is a contact here, not an alarm's state)."""
        if not code:
            return ""
        if self.lang != "zh":
            return code
        return {"open": "断开", "closed": "闭合", "armed": "待合闸", "unknown": "未知"}.get(code, code)

    def money(self, yuan: str | int | None) -> str:
        """A yuan string of the API (or integer fen) as the site writes money."""
        if yuan is None or yuan == "":
            return ""
        try:
            value = Decimal(yuan) / 100 if isinstance(yuan, int) else Decimal(yuan)
        except InvalidOperation:
            return str(yuan)
        text = f"{abs(value):,.2f}"
        sign = "-" if value < 0 else ""
        return f"{sign}{text} 元" if self.lang == "zh" else f"{sign}¥{text}"

    def when(self, at: dt.datetime | str | None, *, seconds: bool = False) -> str:
        """A moment in the site's time zone: 2026年12月3日 17:49 (zh), 3 Dec 2026 17:49 (en)."""
        if at is None or at == "":
            return ""
        if isinstance(at, str):
            try:
                at = dt.datetime.fromisoformat(at)
            except ValueError:
                return at
        local = at.astimezone(self.tz)
        clock = local.strftime("%H:%M:%S" if seconds else "%H:%M")
        if self.lang == "zh":
            return f"{local.year}年{local.month}月{local.day}日 {clock}"
        return f"{local.day} {local.strftime('%b')} {local.year} {clock}"

    def iso_local(self, at: dt.datetime | None) -> str:
        """For ``<input type=datetime-local>``."""
        return "" if at is None else at.astimezone(self.tz).strftime("%Y-%m-%dT%H:%M")

    def energy(self, wh: int | None) -> str:
        if wh is None:
            return ""
        return f"{wh / 1000:,.3f} kWh" if self.lang == "en" else f"{wh / 1000:,.3f} 千瓦时"

    def functions(self) -> dict[str, Callable[..., str]]:
        """What the templates call."""
        return {"_": self.text, "term": self.term, "money": self.money, "when": self.when,
                "energy": self.energy, "relay": self.relay,
                "status": self.status}
