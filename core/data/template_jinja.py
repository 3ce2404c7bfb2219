"""Export a :class:`~tuneforge.data.template.Template` as a Hugging Face chat template (Jinja).

Kept apart from the renderer: rendering (``template.py``) is what training and chat use; this module
only writes the same rendering as Jinja, so a saved tokenizer renders at inference the text training
saw. Every output is a ``{{- ... -}}`` or ``{%- ... -%}`` tag, so Hugging Face's trim/lstrip settings
cannot add whitespace.
"""

from __future__ import annotations

from .template import _PLACEHOLDER, Template


def template_to_jinja(template: Template) -> str:
    """The Jinja text that renders like ``template.render_prompt`` (see :meth:`Template.to_jinja`)."""
    return _JinjaWriter(template).build()


def _jinja_str(text: str) -> str:
    """A Jinja string literal (Jinja unescapes literals with Python's unicode-escape)."""
    escaped = text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return "'" + escaped + "'"


class _JinjaWriter:
    """Turns a Template's slots into one Jinja chat template. Every output is a ``{{- ... -}}`` or
    ``{%- ... -%}`` tag, so Hugging Face's trim/lstrip settings cannot add whitespace."""

    def __init__(self, template: Template):
        self.t = template

    def expr(self, slot: str, variables: dict[str, str]) -> str:
        pieces, pos = [], 0
        for match in _PLACEHOLDER.finditer(slot):
            if match.start() > pos:
                pieces.append(_jinja_str(slot[pos : match.start()]))
            pieces.append("(" + variables[match.group(1)] + ")")
            pos = match.end()
        if pos < len(slot):
            pieces.append(_jinja_str(slot[pos:]))
        return " ~ ".join(pieces) if pieces else "''"

    def msg(self, slot: str, content: str, idx: str = "0") -> str:
        return self.expr(slot, {"content": content, "bos_token": "_bos", "eos_token": "_eos", "idx": idx, "name": "ns.call"})

    def build(self) -> str:
        t = self.t
        eos_after = " ~ _eos" if t.append_eos else ""
        out = _TYPESCRIPT_MACROS if "parameters_typescript" in _PLACEHOLDER.findall(t.format_tool) else []
        if t.tool_argument_quote is not None or "parameters_declaration" in _PLACEHOLDER.findall(t.format_tool):
            quote = _jinja_str(t.tool_argument_quote or '"')
            out = out + [line.replace("@Q@", quote) for line in _DECLARATION_MACROS]
        out = out + [
            "{%- set _bos = bos_token if bos_token is defined and bos_token is not none else '' -%}",
            "{%- set _eos = eos_token if eos_token is defined and eos_token is not none else '' -%}",
            "{%- set ns = namespace(system=" + _jinja_str(t.default_system) + ", items='', names='', args='', call='') -%}",
            "{%- if messages and messages[0]['role'] == 'system' -%}",
            "{%- if messages[0]['content'] -%}{%- set ns.system = messages[0]['content'] -%}{%- endif -%}",
            "{%- set loop_messages = messages[1:] -%}",
            "{%- else -%}{%- set loop_messages = messages -%}{%- endif -%}",
            # tools offered
            "{%- if tools is defined and tools -%}",
            "{%- for _t in tools -%}",
            "{%- if _t['type'] is defined and _t['type'] == 'function' and _t['function'] is defined -%}"
            "{%- set _fn = _t['function'] -%}{%- else -%}{%- set _fn = _t -%}{%- endif -%}",
        ]
        if t.tool_wrap_function:
            out.append("{%- if _t['type'] is defined and _t['type'] == 'function' -%}{%- set _shown = _t -%}"
                       "{%- else -%}{%- set _shown = {'type': 'function', 'function': _t} -%}{%- endif -%}")
        else:
            out.append("{%- set _shown = _fn -%}")
        indent = "" if t.tool_json_indent is None else f"(indent={int(t.tool_json_indent)})"
        item = self.expr(t.format_tool, {
            "tool": f"_shown | tojson{indent}",
            "name": "_fn['name'] if _fn['name'] is defined else ''",
            "description": "_fn['description'] if _fn['description'] is defined else ''",
            "parameters": "(_fn['parameters'] if _fn['parameters'] is defined else {}) | tojson",
            "parameters_typescript": "_ts_parameters(_fn['parameters'] if _fn['parameters'] is defined else {})",
            "parameters_declaration": "_decl_params(_fn['parameters'] if _fn['parameters'] is defined else {})",
        })
        out += [
            "{%- set ns.items = ns.items ~ (" + _jinja_str(t.tool_separator) + " if not loop.first else '') ~ " + item + " -%}",
            "{%- set ns.names = ns.names ~ (', ' if not loop.first else '') ~ (_fn['name'] if _fn['name'] is defined else '') -%}",
            "{%- endfor -%}",
            "{%- set _tools_text = " + self.expr(t.format_tools, {"content": "ns.items", "tool_names": "ns.names"}) + " -%}",
            "{%- if ns.system -%}{%- set ns.system = " + ("_tools_text ~ " + _jinja_str(t.system_tools_separator) + " ~ ns.system" if t.tools_before_system
                                                      else "ns.system ~ " + _jinja_str(t.system_tools_separator) + " ~ _tools_text") + " -%}"
            "{%- else -%}{%- set ns.system = _tools_text -%}{%- endif -%}",
            "{%- endif -%}",
        ]
        if t.format_prefix:
            out.append("{{- " + self.msg(t.format_prefix, "''") + " -}}")
        if not t.system_in_user:
            out.append("{%- if ns.system -%}{{- " + self.msg(t.format_system, "ns.system") + " -}}{%- endif -%}")
        out += [
            "{%- for message in loop_messages -%}",
            "{%- set content = message['content'] if message['content'] is string else '' -%}",
        ]
        if t.system_in_user:
            out.append("{%- if loop.first and ns.system -%}{%- set content = " + self.msg(t.format_system, "ns.system") + " ~ content -%}{%- endif -%}")
        idx = "(loop.index0 // 2) | string"
        out += [
            "{%- if message['role'] == 'user' -%}",
            "{{- " + self.msg(t.format_user, "content", idx) + " -}}",
            "{%- elif message['role'] == 'tool' or message['role'] == 'observation' -%}",
            "{{- " + self.msg(t.format_observation or t.format_user, "content", idx) + " -}}",
            "{%- elif message['role'] == 'assistant' or message['role'] == 'function' -%}",
        ]
        if t.reasoning:
            open_tag, close_tag = (_jinja_str(w.strip()) for w in t.thought_words)
            out += [
                "{%- set _last = loop.last -%}",
                "{%- set _keep = preserve_thinking if preserve_thinking is defined and preserve_thinking is not none else "
                + ("true" if t.preserve_thinking else "false") + " -%}",
                "{%- if (not _last and not _keep) or (_last and enable_thinking is defined and enable_thinking is false) -%}",
                "{%- if " + close_tag + " in content -%}{%- set content = content.split(" + close_tag + ")[-1].lstrip('\\n') -%}{%- endif -%}",
                "{%- endif -%}",
                "{%- if _last and " + open_tag + " not in content and " + close_tag + " not in content"
                + (" and not (message['tool_calls'] is defined and message['tool_calls'])" if t.tool_call_thought_close is not None else "")
                + " -%}"
                "{{- " + _jinja_str(t.empty_thought) + " -}}{%- endif -%}",
            ]
        arguments = "_c['arguments'] if _c['arguments'] is string else (_c['arguments'] | tojson)"
        each_argument = ""
        if t.format_tool_argument is not None:
            value = "(_v | tojson)" if t.tool_argument_json_strings else "(_v if _v is string else (_v | tojson))"
            if t.tool_argument_quote is not None:
                value = "_qv(_v, false, " + ("true" if t.tool_argument_sorted else "false") + ")"
            pairs = "_c['arguments'] | dictsort" if t.tool_argument_sorted else "_c['arguments'].items()"
            argument = self.expr(t.format_tool_argument, {"key": "_k", "value": value})
            each_argument = ("{%- set ns.args = '' -%}{%- if _c['arguments'] is mapping -%}"
                             "{%- for _k, _v in " + pairs + " -%}"
                             "{%- set ns.args = ns.args ~ (" + _jinja_str(t.tool_argument_separator) + " if not loop.first else '') ~ "
                             + argument + " -%}{%- endfor -%}{%- else -%}{%- set ns.args = _c['arguments'] -%}{%- endif -%}")
            arguments = "ns.args"
        call = self.expr(t.format_tool_call, {"name": "_c['name']", "arguments": arguments})
        many = t.format_tool_calls_many if t.format_tool_calls_many is not None else t.format_tool_calls
        function_slot = t.format_function or t.format_assistant
        out += [
            "{%- if message['tool_calls'] is defined and message['tool_calls'] -%}",
            "{%- set ns.items = '' -%}",
            "{%- for _tc in message['tool_calls'] -%}",
            "{%- set _c = _tc['function'] if _tc['function'] is defined else _tc -%}"
            "{%- if loop.first -%}{%- set ns.call = _c['name'] -%}{%- endif -%}" + each_argument,
            "{%- set ns.items = ns.items ~ (" + _jinja_str(t.tool_call_separator) + " if not loop.first else '') ~ " + call + " -%}",
            "{%- endfor -%}",
            "{%- if message['tool_calls'] | length > 1 -%}{%- set _calls = " + self.expr(many, {"content": "ns.items"}) + " -%}"
            "{%- else -%}{%- set _calls = " + self.expr(t.format_tool_calls, {"content": "ns.items"}) + " -%}{%- endif -%}",
            "{{- " + self.msg(function_slot, "_calls") + eos_after + " -}}",
            "{%- elif message['role'] == 'function' -%}",
            "{{- " + self.msg(function_slot, "content") + eos_after + " -}}",
            "{%- else -%}",
            "{{- " + self.msg(t.format_assistant, "content") + eos_after + " -}}",
            "{%- endif -%}",
            "{%- endif -%}",
            "{%- endfor -%}",
        ]
        if t.reasoning:
            out.append("{%- if add_generation_prompt and enable_thinking is defined and enable_thinking is false -%}"
                       "{{- " + _jinja_str(t.empty_thought) + " -}}{%- endif -%}")
        return "\n".join(out) + "\n"


#: Jinja macros writing a tool's JSON schema parameters as harmony's TypeScript-like function type, exactly as
#: :func:`tuneforge.data.template.typescript_parameters` does (the ``{{parameters_typescript}}`` placeholder).
_TYPESCRIPT_MACROS = [
    "{%- macro _ts_type(s) -%}",
    "{%- set _k = s['type'] if s is mapping and s['type'] is defined else none -%}",
    "{%- set _null = ' | null' if s is mapping and s['nullable'] is defined and s['nullable'] else '' -%}",
    "{%- if s is not mapping -%}{{- 'any' -}}",
    "{%- elif _k == 'array' -%}",
    "{%- set _i = s['items'] if s['items'] is defined else none -%}",
    "{%- if not _i -%}{{- 'any[]' ~ _null -}}",
    "{%- elif _i is mapping and _i['type'] is defined and _i['type'] in ['string', 'number', 'integer', 'boolean'] -%}"
    "{{- ('number' if _i['type'] == 'integer' else _i['type']) ~ '[]' ~ _null -}}",
    "{%- else -%}{%- set _inner = _ts_type(_i) -%}"
    "{{- ('any[]' if _inner == 'object | object' or _inner | length > 50 else _inner ~ '[]') ~ _null -}}{%- endif -%}",
    "{%- elif _k is iterable and _k is not string and _k is not mapping and _k | length > 0 -%}{{- _k | join(' | ') -}}",
    "{%- elif s['oneOf'] is defined and s['oneOf'] -%}",
    "{%- set _o = namespace(obj=false) -%}",
    "{%- for _v in s['oneOf'] -%}{%- if _v is mapping and _v['type'] is defined and _v['type'] == 'object' -%}"
    "{%- set _o.obj = true -%}{%- endif -%}{%- endfor -%}",
    "{%- if _o.obj and s['oneOf'] | length > 1 -%}{{- 'any' -}}{%- else -%}"
    "{%- for _v in s['oneOf'] -%}{{- (' | ' if not loop.first else '') ~ _ts_type(_v) -}}{%- endfor -%}{%- endif -%}",
    "{%- elif _k == 'string' -%}",
    "{%- if s['enum'] is defined and s['enum'] -%}{{- '\"' ~ (s['enum'] | join('\" | \"')) ~ '\"' -}}"
    "{%- else -%}{{- 'string' ~ _null -}}{%- endif -%}",
    "{%- elif _k == 'number' or _k == 'integer' -%}{{- 'number' -}}",
    "{%- elif _k == 'boolean' -%}{{- 'boolean' -}}",
    "{%- elif _k == 'object' -%}",
    "{%- if s['properties'] is defined and s['properties'] -%}",
    "{%- set _r = s['required'] if s['required'] is defined and s['required'] else [] -%}",
    "{{- '{\\n' -}}{%- for _n, _p in s['properties'].items() -%}"
    "{{- (', ' if not loop.first else '') ~ _n ~ ('' if _n in _r else '?') ~ ': ' ~ _ts_type(_p) -}}{%- endfor -%}{{- '}' -}}",
    "{%- else -%}{{- 'object' -}}{%- endif -%}",
    "{%- else -%}{{- 'any' -}}{%- endif -%}",
    "{%- endmacro -%}",
    "{%- macro _ts_parameters(p) -%}",
    "{%- if p is mapping and p['properties'] is defined and p['properties'] is mapping and p['properties'] -%}",
    "{%- set _r = p['required'] if p['required'] is defined and p['required'] else [] -%}",
    "{{- '(_: {\\n' -}}",
    "{%- for _n, _s in p['properties'].items() -%}",
    "{%- set _s = _s if _s is mapping else {} -%}",
    "{%- if _s['description'] is defined and _s['description'] -%}{{- '// ' ~ _s['description'] ~ '\\n' -}}{%- endif -%}",
    "{{- _n ~ ('' if _n in _r else '?') ~ ': ' ~ _ts_type(_s) -}}",
    "{%- if _s['default'] is defined -%}",
    "{%- if _s['enum'] is defined and _s['enum'] -%}{{- ', // default: ' ~ _s['default'] -}}",
    "{%- elif _s['oneOf'] is defined and _s['oneOf'] -%}{{- '// default: ' ~ _s['default'] -}}",
    "{%- else -%}{{- ', // default: ' ~ (_s['default'] | tojson) -}}{%- endif -%}",
    "{%- endif -%}",
    "{{- ',\\n' -}}",
    "{%- endfor -%}",
    "{{- '}) => any' -}}",
    "{%- else -%}{{- '() => any' -}}{%- endif -%}",
    "{%- endmacro -%}",
]


#: Jinja macros for Gemma 4's object notation (``@Q@``: the quote, filled in), as :func:`tuneforge.data.template.quoted_value`
#: and :func:`tuneforge.data.template.declaration_parameters` write it (``tool_argument_quote``, ``{{parameters_declaration}}``).
_DECLARATION_MACROS = [
    "{%- macro _qv(v, qk, srt) -%}",
    "{%- if v is string -%}{{- @Q@ ~ v ~ @Q@ -}}",
    "{%- elif v is boolean -%}{{- 'true' if v else 'false' -}}",
    "{%- elif v is mapping -%}{{- '{' -}}{%- for _k, _x in (v | dictsort if srt else v.items()) -%}"
    "{{- (',' if not loop.first else '') ~ ((@Q@ ~ _k ~ @Q@) if qk else _k) ~ ':' ~ _qv(_x, qk, srt) -}}{%- endfor -%}{{- '}' -}}",
    "{%- elif v is iterable -%}{{- '[' -}}{%- for _x in v -%}{{- (',' if not loop.first else '') ~ _qv(_x, qk, srt) -}}{%- endfor -%}{{- ']' -}}",
    "{%- else -%}{{- v -}}{%- endif -%}",
    "{%- endmacro -%}",
    "{%- macro _qlist(l) -%}{%- for _r in l -%}{{- (',' if not loop.first else '') ~ @Q@ ~ _r ~ @Q@ -}}{%- endfor -%}{%- endmacro -%}",
    "{%- macro _decl_props(props, skip) -%}",
    "{%- set _o = namespace(s='') -%}",
    "{%- for _k, _s0 in props | dictsort -%}",
    "{%- if not skip or _k not in ['description', 'type', 'properties', 'required', 'nullable'] -%}",
    "{%- set _s = _s0 if _s0 is mapping else {} -%}",
    "{%- set _kind = (_s['type'] | string | upper) if _s['type'] is defined else '' -%}",
    "{%- set _n = namespace(s='') -%}",
    "{%- if _s['description'] is defined and _s['description'] -%}{%- set _n.s = 'description:' ~ @Q@ ~ _s['description'] ~ @Q@ -%}{%- endif -%}",
    "{%- if _kind == 'STRING' and _s['enum'] is defined and _s['enum'] -%}"
    "{%- set _n.s = _n.s ~ (',' if _n.s else '') ~ 'enum:' ~ _qv(_s['enum'], true, true) -%}{%- endif -%}",
    "{%- if _kind == 'ARRAY' and _s['items'] is defined and _s['items'] is mapping and _s['items'] -%}",
    "{%- set _m = namespace(s='') -%}",
    "{%- for _ik, _iv in _s['items'] | dictsort -%}{%- if _iv is not none -%}",
    "{%- if _ik == 'properties' -%}{%- set _piece = 'properties:{' ~ (_decl_props(_iv, false) if _iv is mapping else '') ~ '}' -%}",
    "{%- elif _ik == 'required' -%}{%- set _piece = 'required:[' ~ _qlist(_iv) ~ ']' -%}",
    "{%- elif _ik == 'type' -%}{%- set _piece = 'type:' ~ _qv((_iv | upper) if _iv is string else (_iv | map('upper') | list), true, true) -%}",
    "{%- else -%}{%- set _piece = _ik ~ ':' ~ _qv(_iv, true, true) -%}{%- endif -%}",
    "{%- set _m.s = _m.s ~ (',' if _m.s else '') ~ _piece -%}",
    "{%- endif -%}{%- endfor -%}",
    "{%- set _n.s = _n.s ~ (',' if _n.s else '') ~ 'items:{' ~ _m.s ~ '}' -%}",
    "{%- endif -%}",
    "{%- if _s['nullable'] is defined and _s['nullable'] -%}{%- set _n.s = _n.s ~ (',' if _n.s else '') ~ 'nullable:true' -%}{%- endif -%}",
    "{%- if _kind == 'OBJECT' -%}",
    "{%- if _s['properties'] is defined and _s['properties'] is mapping -%}"
    "{%- set _piece = 'properties:{' ~ _decl_props(_s['properties'], false) ~ '}' -%}",
    "{%- else -%}{%- set _piece = 'properties:{' ~ _decl_props(_s, true) ~ '}' -%}{%- endif -%}",
    "{%- set _n.s = _n.s ~ (',' if _n.s else '') ~ _piece -%}",
    "{%- if _s['required'] is defined and _s['required'] -%}{%- set _n.s = _n.s ~ ',required:[' ~ _qlist(_s['required']) ~ ']' -%}{%- endif -%}",
    "{%- endif -%}",
    "{%- set _n.s = _n.s ~ (',' if _n.s else '') ~ 'type:' ~ @Q@ ~ _kind ~ @Q@ -%}",
    "{%- set _o.s = _o.s ~ (',' if _o.s else '') ~ _k ~ ':{' ~ _n.s ~ '}' -%}",
    "{%- endif -%}{%- endfor -%}",
    "{{- _o.s -}}",
    "{%- endmacro -%}",
    "{%- macro _decl_params(p) -%}",
    "{%- if p is mapping and p -%}",
    "{{- ',parameters:{' -}}",
    "{%- if p['properties'] is defined and p['properties'] is mapping and p['properties'] -%}"
    "{{- 'properties:{' ~ _decl_props(p['properties'], false) ~ '},' -}}{%- endif -%}",
    "{%- if p['required'] is defined and p['required'] -%}{{- 'required:[' ~ _qlist(p['required']) ~ '],' -}}{%- endif -%}",
    "{%- if p['type'] is defined and p['type'] -%}{{- 'type:' ~ @Q@ ~ (p['type'] | string | upper) ~ @Q@ ~ '}' -}}{%- endif -%}",
    "{%- endif -%}",
    "{%- endmacro -%}",
]
