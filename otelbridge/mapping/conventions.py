"""The published vocabulary: every span, event, attribute and metric name otelbridge emits.

``docs/conventions.md`` documents each name with its type, unit and meaning; a test keeps
the two in step. Renaming anything here is a breaking change of ``CONTRACT_VERSION``.
"""

from __future__ import annotations

from typing import Final

CONTRACT_VERSION: Final = "3.1.0"
INSTRUMENTATION_SCOPE: Final = "otelbridge"
PROVIDER_NAME: Final = "cartesia"

# --- span names -------------------------------------------------------------------------
SPAN_CALL: Final = "invoke_agent"  # root; "invoke_agent {agent name}" when the name is known
SPAN_USER_TURN: Final = "user_turn"
SPAN_ASSISTANT_TURN: Final = "assistant_turn"
SPAN_TURN_PREFIX: Final = "turn"  # "turn {role}" for roles other than user/assistant
SPAN_TOOL: Final = "execute_tool"  # "execute_tool {tool name}"
#: a post_call_analysis summary that arrived after the root span was exported (child of the root)
SPAN_CALL_ANALYSIS: Final = "call_analysis"

# --- OTel GenAI attributes (development status upstream) --------------------------------
GEN_AI_CONVERSATION_ID: Final = "gen_ai.conversation.id"
GEN_AI_AGENT_ID: Final = "gen_ai.agent.id"
GEN_AI_AGENT_NAME: Final = "gen_ai.agent.name"
GEN_AI_OPERATION_NAME: Final = "gen_ai.operation.name"
GEN_AI_PROVIDER_NAME: Final = "gen_ai.provider.name"
GEN_AI_TOOL_NAME: Final = "gen_ai.tool.name"
GEN_AI_TOOL_CALL_ID: Final = "gen_ai.tool.call.id"
GEN_AI_TOOL_CALL_ARGUMENTS: Final = "gen_ai.tool.call.arguments"
GEN_AI_TOOL_CALL_RESULT: Final = "gen_ai.tool.call.result"
GEN_AI_TOOL_TYPE: Final = "gen_ai.tool.type"

OPERATION_INVOKE_AGENT: Final = "invoke_agent"
OPERATION_EXECUTE_TOOL: Final = "execute_tool"
OPERATION_USER_TURN: Final = "user_turn"
OPERATION_ASSISTANT_TURN: Final = "assistant_turn"
OPERATION_CALL_ANALYSIS: Final = "call_analysis"

# --- call (root span) -------------------------------------------------------------------
CALL_ID: Final = "cartesia.call.id"
AGENT_ID: Final = "cartesia.agent.id"
AGENT_NAME: Final = "cartesia.agent.name"
CALL_STATUS: Final = "cartesia.call.status"
CALL_END_REASON: Final = "cartesia.call.end_reason"
CALL_ERROR_MESSAGE: Final = "cartesia.call.error_message"
CALL_SUMMARY: Final = "cartesia.call.summary"
CALL_TURN_COUNT: Final = "cartesia.call.turn_count"
CALL_METADATA_PREFIX: Final = "cartesia.call.metadata."
CALL_ZDR_ENABLED: Final = "cartesia.call.zdr_enabled"
CALL_REDACTED_AT: Final = "cartesia.call.redacted_at"
DEPLOYMENT_ID: Final = "cartesia.deployment.id"
DEPLOYMENT_VERSION_ID: Final = "cartesia.deployment.version_id"
DEPLOYMENT_REGION: Final = "cartesia.deployment.region"
TELEPHONY_FROM: Final = "cartesia.telephony.from"
TELEPHONY_TO: Final = "cartesia.telephony.to"
TELEPHONY_DIRECTION: Final = "cartesia.telephony.direction"
TELEPHONY_CALL_SID: Final = "cartesia.telephony.call_sid"
TELEPHONY_CONNECTION_TYPE: Final = "cartesia.telephony.connection_type"
TELEPHONY_ACCOUNT_TYPE: Final = "cartesia.telephony.account_type"

# --- turns ------------------------------------------------------------------------------
TURN_ROLE: Final = "cartesia.turn.role"
TURN_TEXT: Final = "cartesia.turn.text"
TURN_END_REASON: Final = "cartesia.turn.end_reason"
TURN_INTERRUPTED: Final = "cartesia.turn.interrupted"
TURN_VAD_BUFFER_MS: Final = "cartesia.turn.vad_buffer_ms"
TURN_START_OFFSET: Final = "cartesia.turn.start_offset"
TTS_TTFB: Final = "cartesia.tts.ttfb"
STT_TTFB: Final = "cartesia.stt.ttfb"
#: seconds from the end of the caller's turn to the start of the assistant turn (since 2.1.0)
TURN_RESPONSE_LATENCY: Final = "cartesia.turn.response_latency"

# --- OpenInference (since 3.0.0): what Arize Phoenix, Langfuse and other LLM-observability
# backends read to show the conversation (docs/conventions.md, "OpenInference") ---------------
OI_SPAN_KIND: Final = "openinference.span.kind"
OI_KIND_AGENT: Final = "AGENT"  # the root
OI_KIND_CHAIN: Final = "CHAIN"  # turns and call_analysis
OI_KIND_TOOL: Final = "TOOL"  # tool spans
OI_INPUT_VALUE: Final = "input.value"
OI_INPUT_MIME_TYPE: Final = "input.mime_type"
OI_OUTPUT_VALUE: Final = "output.value"
OI_OUTPUT_MIME_TYPE: Final = "output.mime_type"
OI_SESSION_ID: Final = "session.id"
OI_USER_ID: Final = "user.id"
#: a JSON object as a string: the call's deployment id and end reason, and its metadata
OI_METADATA: Final = "metadata"
MIME_TEXT: Final = "text/plain"
MIME_JSON: Final = "application/json"

# --- span events ------------------------------------------------------------------------
EVENT_TEXT_CHUNK: Final = "cartesia.text_chunk"
EVENT_TTS_FIRST_BYTE: Final = "cartesia.tts.first_byte"
EVENT_STT_FIRST_BYTE: Final = "cartesia.stt.first_byte"
EVENT_LOG_METRIC: Final = "cartesia.log_metric"
CHUNK_TEXT: Final = "cartesia.text_chunk.text"
CHUNK_INDEX: Final = "cartesia.text_chunk.index"
LOG_EVENT: Final = "cartesia.log.event"
LOG_LEVEL: Final = "cartesia.log.level"
LOG_MESSAGE: Final = "cartesia.log.message"
LOG_METADATA_PREFIX: Final = "cartesia.log.metadata."
LOG_METRIC_NAME: Final = "cartesia.log_metric.name"
LOG_METRIC_VALUE: Final = "cartesia.log_metric.value"

# --- otelbridge's own markers -----------------------------------------------------------
TIME_ADJUSTED: Final = "otelbridge.time_adjusted"
TIME_ADJUSTMENTS: Final = "otelbridge.time_adjustments"
TRUNCATED: Final = "otelbridge.truncated_attributes"
CONTRACT: Final = "otelbridge.contract.version"
ERROR_TYPE: Final = "error.type"

# --- metrics ----------------------------------------------------------------------------
METRIC_TTS_TTFB: Final = "cartesia.tts.ttfb"
METRIC_STT_TTFB: Final = "cartesia.stt.ttfb"
METRIC_CALL_DURATION: Final = "cartesia.call.duration"
METRIC_TURN_DURATION: Final = "cartesia.turn.duration"
METRIC_RESPONSE_LATENCY: Final = "cartesia.turn.response_latency"
METRIC_CALLS: Final = "cartesia.calls"
METRIC_TURNS: Final = "cartesia.turns"
#: assistant turns the caller interrupted (barge-in), by agent and deployment; since 3.0.0
METRIC_TURNS_INTERRUPTED: Final = "cartesia.turns.interrupted"
METRIC_TOOL_CALLS: Final = "cartesia.tool_calls"
METRIC_LOG_METRIC_PREFIX: Final = "cartesia.log_metric."
METRIC_LOG_METRIC_OTHER: Final = "cartesia.log_metric.other"

#: TTFB buckets in seconds: 10 ms steps below 100 ms, then resolving 50 ms to 5 s.
TTFB_BUCKETS_S: Final = (
    0.025, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.75,
    1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 7.5, 10.0,
)  # fmt: skip
#: response latency in seconds: 100 ms steps to 1 s, then resolving to 10 s.
RESPONSE_LATENCY_BUCKETS_S: Final = (
    0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.25, 1.5, 1.75,
    2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 7.5, 10.0,
)  # fmt: skip
CALL_DURATION_BUCKETS_S: Final = (
    1.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 180.0, 300.0, 600.0, 900.0, 1800.0, 3600.0,
)  # fmt: skip
TURN_DURATION_BUCKETS_S: Final = (
    0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0, 13.0, 20.0, 30.0, 60.0,
)  # fmt: skip
#: for LogMetric durations (names ending in ``_ms``, ``_s``… like the Line SDK's
#: ``llm_first_chunk_ms``), recorded in seconds
LOG_METRIC_SECONDS_BUCKETS: Final = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0,
)  # fmt: skip

METRIC_ATTR_AGENT_ID: Final = AGENT_ID
METRIC_ATTR_STATUS: Final = CALL_STATUS
METRIC_ATTR_END_REASON: Final = CALL_END_REASON
METRIC_ATTR_ROLE: Final = TURN_ROLE
METRIC_ATTR_INTERRUPTED: Final = TURN_INTERRUPTED
METRIC_ATTR_TOOL_NAME: Final = GEN_AI_TOOL_NAME
METRIC_ATTR_LOG_VALUE: Final = LOG_METRIC_VALUE
METRIC_ATTR_LOG_NAME: Final = LOG_METRIC_NAME
#: on the TTFB, response latency, turn duration and call metrics (since 2.1.0): the call's
#: deployment, DEPLOYMENT_NONE without one, DEPLOYMENT_OTHER past the per-agent limit
METRIC_ATTR_DEPLOYMENT_ID: Final = DEPLOYMENT_ID
DEPLOYMENT_NONE: Final = "none"
DEPLOYMENT_OTHER: Final = "other"

# --- self-metrics of otelbridge serve (instrumentation scope SELF_SCOPE) -----------------
SELF_SCOPE: Final = "otelbridge.self"
SELF_WEBHOOKS: Final = "otelbridge.webhooks"  # {webhook}; type, outcome
SELF_EVENTS: Final = "otelbridge.events"  # {event}; type
SELF_PROCESSING_ERRORS: Final = "otelbridge.processing.errors"  # {event}
SELF_LATE_LOG_ITEMS: Final = "otelbridge.late_log_items"  # {item}
SELF_SPANS: Final = "otelbridge.spans"  # {span}
SELF_EXPORT_ATTEMPTS: Final = "otelbridge.export.attempts"  # {request}; signal, outcome
SELF_EXPORT_REJECTED: Final = "otelbridge.export.rejected"  # {item}; signal
SELF_DEAD_LETTERS: Final = "otelbridge.export.dead_letters"  # {request}; signal
SELF_SPOOL_DROPPED: Final = "otelbridge.spool.dropped"  # {request}; signal, reason
SELF_EXPORT_LAG: Final = "otelbridge.export.lag"  # s
SELF_SPOOL_DEPTH: Final = "otelbridge.spool.depth"  # {request}; signal
SELF_SPOOL_BYTES: Final = "otelbridge.spool.size"  # By
SELF_SPOOL_OLDEST_AGE: Final = "otelbridge.spool.oldest_age"  # s
SELF_INBOX_DEPTH: Final = "otelbridge.inbox.depth"  # {event}
SELF_OPEN_CALLS: Final = "otelbridge.calls.open"  # {call}
SELF_DEPLOYMENTS_FOLDED: Final = "otelbridge.deployments.folded"  # {point}
SELF_LEADER: Final = "otelbridge.leader"  # 1 on the replica that processes, polls and sends
SELF_METRICS_FOLDED: Final = "otelbridge.metrics.folded"  # {point}; limit (since 3.1.0)
SELF_METRICS_SERIES_DROPPED: Final = "otelbridge.metrics.series_dropped"  # {series}; limit (since 3.1.0)
SELF_ATTR_TYPE: Final = "type"
SELF_ATTR_OUTCOME: Final = "outcome"
SELF_ATTR_SIGNAL: Final = "signal"
SELF_ATTR_REASON: Final = "reason"
SELF_ATTR_LIMIT: Final = "limit"

# --- evaluations (LLM-judge results, OTELBRIDGE_EVALUATIONS=true) -------------------------
SPAN_EVALUATION: Final = "evaluation"  # "evaluation {metric name}", child of the root
OPERATION_EVALUATION: Final = "evaluation"
EVENT_EVALUATION_RESULT: Final = "gen_ai.evaluation.result"
GEN_AI_EVALUATION_NAME: Final = "gen_ai.evaluation.name"
GEN_AI_EVALUATION_SCORE_VALUE: Final = "gen_ai.evaluation.score.value"
GEN_AI_EVALUATION_SCORE_LABEL: Final = "gen_ai.evaluation.score.label"
EVALUATION_ID: Final = "cartesia.evaluation.id"
EVALUATION_METRIC_ID: Final = "cartesia.evaluation.metric_id"
EVALUATION_STATUS: Final = "cartesia.evaluation.status"
EVALUATION_RESULT: Final = "cartesia.evaluation.result"
METRIC_EVALUATION_VALUE: Final = "cartesia.evaluation.value"
METRIC_EVALUATIONS: Final = "cartesia.evaluations"
