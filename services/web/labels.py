"""The pages' Chinese names for the platform's values (entries, roles, document types).

User-facing error texts are not here: they come from the platform (LocalizedMessage), as
the FAQ words them, and are shown as they are.
"""

from __future__ import annotations

# The login page's tabs (D1, D5): key in the URL -> platform entry and title.
ENTRIES = {
    "enterprise": ("ENTRY_ENTERPRISE", "企业业务"),
    "natural": ("ENTRY_NATURAL_PERSON", "自然人业务"),
    "agent": ("ENTRY_AGENT", "代理业务"),
    "subject": ("ENTRY_SPECIFIC_SUBJECT", "特定主体"),
}
ENTRY_NAMES = {entry: title for entry, title in ENTRIES.values()}

ROLES = {
    "ROLE_LEGAL_REPRESENTATIVE": "法定代表人",
    "ROLE_FINANCIAL_OFFICER": "财务负责人",
    "ROLE_TAX_OFFICER": "办税员",
    "ROLE_INVOICE_OFFICER": "购票员",
    "ROLE_CROSS_REGION_HANDLER": "经办人",
    "ROLE_CROSS_REGION_CONTACT": "联系人",
    "ROLE_TAX_AGENT": "税务代理人员",
}
# Roles a person applies for or is added as (F1).
GRANTABLE_ROLES = ("ROLE_TAX_OFFICER", "ROLE_INVOICE_OFFICER")
MANAGER_ROLES = ("ROLE_LEGAL_REPRESENTATIVE", "ROLE_FINANCIAL_OFFICER")

SUBJECT_TYPES = {
    "SUBJECT_TYPE_CROSS_REGION_INSPECTION": "跨区域报验户",
    "SUBJECT_TYPE_CROSS_REGION_TAX_SOURCE": "跨区税源登记",
}

# B4: registered online directly.
ONLINE_DOCUMENTS = {
    "DOCUMENT_TYPE_RESIDENT_IDENTITY_CARD": "居民身份证",
    "DOCUMENT_TYPE_HK_MACAO_TRAVEL_PERMIT": "港澳居民来往内地通行证",
    "DOCUMENT_TYPE_TAIWAN_TRAVEL_PERMIT": "台湾居民来往大陆通行证",
    "DOCUMENT_TYPE_CHINESE_PASSPORT": "中国护照",
    "DOCUMENT_TYPE_FOREIGN_PERMANENT_RESIDENT_ID": "外国人永久居留身份证",
    "DOCUMENT_TYPE_HK_MACAO_RESIDENCE_PERMIT": "中华人民共和国港澳居民居住证",
    "DOCUMENT_TYPE_TAIWAN_RESIDENCE_PERMIT": "中华人民共和国台湾居民居住证",
}
# B5: the hall collects the real-name information first.
HALL_FIRST_DOCUMENTS = {
    "DOCUMENT_TYPE_FOREIGN_PASSPORT": "外国护照",
    "DOCUMENT_TYPE_FOREIGNER_WORK_PERMIT_A": "中华人民共和国外国人工作许可证（A类）",
    "DOCUMENT_TYPE_FOREIGNER_WORK_PERMIT_B": "中华人民共和国外国人工作许可证（B类）",
    "DOCUMENT_TYPE_FOREIGNER_WORK_PERMIT_C": "中华人民共和国外国人工作许可证（C类）",
}
# B6: overseas registration by email.
OVERSEAS_DOCUMENTS = {
    **HALL_FIRST_DOCUMENTS,
    "DOCUMENT_TYPE_OTHER_PERSONAL_DOCUMENT": "其他个人证件",
}
DOCUMENTS = {**ONLINE_DOCUMENTS, **OVERSEAS_DOCUMENTS}

RELATION_STATES = {
    "RELATION_STATE_PENDING": "待确认",
    "RELATION_STATE_ACTIVE": "已绑定",
    "RELATION_STATE_REJECTED": "已拒绝",
    "RELATION_STATE_WITHDRAWN": "已撤回",
    "RELATION_STATE_ENDED": "已解除",
    "RELATION_STATE_REPLACED": "已变更",
    "RELATION_STATE_EXPIRED": "已过期",
}

PURPOSES = {
    "VERIFICATION_PURPOSE_REGISTRATION": "用户注册",
    "VERIFICATION_PURPOSE_LOGIN": "登录",
    "VERIFICATION_PURPOSE_PASSWORD_RESET": "忘记密码",
    "VERIFICATION_PURPOSE_PHONE_ADD": "添加手机号码",
    "VERIFICATION_PURPOSE_PHONE_RECOVERY": "找回手机号码",
    "VERIFICATION_PURPOSE_REAL_NAME_UPGRADE": "提升实名等级",
    "VERIFICATION_PURPOSE_UNLOCK": "刷脸解锁",
    "VERIFICATION_PURPOSE_RISKY_OPERATION": "风险业务核验",
    "VERIFICATION_PURPOSE_SPECIFIC_SUBJECT_LOGIN": "特定主体登录",
}

# Where a login or password-reset code goes: the default phone (D2), or for an overseas
# person without a phone their email (B6). Step tab, code field, "sent to ...".
CODE_CHANNELS = {
    "sms": {"tab": "短信验证", "code": "短信验证码", "to": "手机"},
    "email": {"tab": "邮箱验证码", "code": "邮箱验证码", "to": "邮箱"},
}

# The pages' own prompts for a field left empty (the platform's texts cover the rest).
REQUIRED = {
    "account": "请输入居民身份证号码/手机号码/用户名",
    "password": "请输入个人用户密码",
    "code": "请输入验证码",
    "phone": "请输入手机号码",
    # Q23: "如编号一栏出现必填的提示，说明没有人企关联关系".
    "subject_number": "此项为必填项",
}
CONFIRMATION_DIFFERS = "两次输入的密码不一致"

PROVINCES = {
    "11": "北京市",
    "31": "上海市",
    "32": "江苏省",
    "33": "浙江省",
    "37": "山东省",
    "44": "广东省",
}

# The simulator's face capture choices (B7), in the face simulator's terms.
CAPTURE_OUTCOMES = {
    "pass": "本人，识别通过",
    "dark": "环境光线较暗",
    "other-face": "背景出现其他人脸",
    "no-motion": "未按提示做动作",
    "busy": "实名核验服务繁忙",
    "mismatch": "人脸与实名信息不符",
}


def province(code: str) -> str:
    return PROVINCES.get(code, "")


def entry_name(entry: str) -> str:
    return ENTRY_NAMES.get(entry, "")


def role_name(role: str) -> str:
    return ROLES.get(role, "")


def document_name(document_type: str) -> str:
    return DOCUMENTS.get(document_type, "")


def subject_type_name(subject_type: str) -> str:
    return SUBJECT_TYPES.get(subject_type, "")


def identity_title(identity: object) -> str:
    """企业业务 · 济南示例科技有限公司 (办税员), as the header and the switch list show it."""
    entry = str(getattr(identity, "entry", ""))
    parts = [entry_name(entry)]
    name = getattr(identity, "client_name", "") or getattr(identity, "enterprise_name", "")
    if name:
        parts.append(str(name))
    project = getattr(identity, "project_number", "")
    if project:
        parts.append(f"项目 {project}")
    role = role_name(str(getattr(identity, "role", "")))
    title = " · ".join(p for p in parts if p)
    return f"{title}（{role}）" if role else title
