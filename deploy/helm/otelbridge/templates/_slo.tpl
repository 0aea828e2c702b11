{{/*
The SLO rule groups of monitoring.prometheusRule.slos: a YAML list of rule groups, one
otelbridge-slo-<name> per enabled SLO (names in order). deploy/prometheus/otelbridge.slo.rules.yaml
is what the defaults render (tests/deploy/slo_rules.py writes it; a test fails when it differs).

An SLO counts the turns of a histogram at or under `threshold` (its `le` bucket) among all of
them, per agent and deployment, summed across replicas. The buckets below are the histograms'
(otelbridge/mapping/conventions.py; a test compares them).
*/}}

{{- define "otelbridge.sloSlis" -}}
responseLatency:
  metric: cartesia_turn_response_latency_seconds
  title: Response latency
  good: assistant turns answer the caller within
  traces: cartesia.turn.response_latency
  alert: CartesiaResponseLatencyHigh
  buckets: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 7.5, 10.0]
ttsTtfb:
  metric: cartesia_tts_ttfb_seconds
  title: TTS time to first byte
  good: assistant turns reach their first audio byte within
  traces: cartesia.tts.ttfb
  alert: CartesiaTtsTtfbHigh
  buckets: [0.025, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 7.5, 10.0]
sttTtfb:
  metric: cartesia_stt_ttfb_seconds
  title: STT time to first byte
  good: user turns get their first transcript within
  traces: cartesia.stt.ttfb
  alert: CartesiaSttTtfbHigh
  buckets: [0.025, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 7.5, 10.0]
{{- end }}

{{- define "otelbridge.sloRuleGroups" -}}
{{- $slis := include "otelbridge.sloSlis" . | fromYaml }}
{{- $by := "sum by (cartesia_agent_id, cartesia_deployment_id)" }}
{{- range $name, $slo := .Values.monitoring.prometheusRule.slos }}
{{- if $slo.enabled }}
{{- $path := printf "monitoring.prometheusRule.slos.%s" $name }}
{{- if not (regexMatch "^[a-z][a-zA-Z0-9]{0,39}$" $name) }}
{{- fail (printf "%s: an SLO name is a letter and letters or digits (it becomes the slo label)" $path) }}
{{- end }}
{{- $sli := get $slis (toString $slo.sli) }}
{{- if not $sli }}
{{- fail (printf "%s.sli: %v is not one of %s" $path $slo.sli (keys $slis | sortAlpha | join ", ")) }}
{{- end }}
{{- if not (regexMatch "^[1-9][0-9]{0,2}d$" (toString $slo.window)) }}
{{- fail (printf "%s.window: %v is not a number of days such as 28d" $path $slo.window) }}
{{- end }}
{{- $days := trimSuffix "d" $slo.window | atoi }}
{{- $objective := float64 $slo.objective }}
{{- if or (le $objective 0.0) (ge $objective 1.0) (ge (mulf 14.4 (subf 1.0 $objective)) 1.0) }}
{{- fail (printf "%s.objective: %v leaves an error budget the page (14.4x its rate, over 1h and 5m) cannot exceed even with every turn bad: choose an objective above 0.93 and below 1" $path $slo.objective) }}
{{- end }}
{{- $threshold := float64 $slo.threshold }}
{{- $boundaries := list }}
{{- range $sli.buckets }}{{ $boundaries = append $boundaries (printf "%v" .) }}{{ end }}
{{- if not (has $threshold $sli.buckets) }}
{{- fail (printf "%s.threshold: %v s is not a bucket boundary of %s, so no bucket counts the turns at or under it; choose one of %s (docs/conventions.md section 5)" $path $slo.threshold $sli.metric (join ", " $boundaries)) }}
{{- end }}
{{- /* le as the exporters write it: "1.5"; a whole number reads "2.0" when scraped, "2" over OTLP */}}
{{- $le := printf "le=\"%v\"" $threshold }}
{{- if eq (floor $threshold) $threshold }}
{{- $le = printf "le=~\"%v(\\\\.0)?\"" $threshold }}
{{- end }}
{{- $o := printf "%v" $objective }}
{{- $percent := printf "%v%%" (round (mulf $objective 100.0) 4) }}
{{- $budget := printf "%v%%" (round (mulf (subf 1.0 $objective) 100.0) 4) }}
{{- $t := printf "%v s" $threshold }}
{{- $sel := printf "{slo=\"%s\"}" $name }}
{{- $help := printf "SLO %s: %s of the %s %s over %s" $name $percent $sli.good $t $slo.window }}
- name: otelbridge-slo-{{ $name }}
  rules:
  - record: cartesia_slo:good:rate5m
    expr: {{ $by }} (rate({{ $sli.metric }}_bucket{ {{- $le -}} }[5m]))
    labels:
      slo: {{ $name }}
  - record: cartesia_slo:total:rate5m
    expr: {{ $by }} (rate({{ $sli.metric }}_count[5m]))
    labels:
      slo: {{ $name }}
  - record: cartesia_slo:sli:ratio_rate5m
    expr: cartesia_slo:good:rate5m{{ $sel }} / cartesia_slo:total:rate5m{{ $sel }}
    labels:
      slo: {{ $name }}
  {{- range list "30m" "1h" "6h" }}
  - record: cartesia_slo:sli:ratio_rate{{ . }}
    expr: |-
      {{ $by }} (rate({{ $sli.metric }}_bucket{ {{- $le -}} }[{{ . }}]))
      / {{ $by }} (rate({{ $sli.metric }}_count[{{ . }}]))
    labels:
      slo: {{ $name }}
  {{- end }}
  - record: cartesia_slo:sli:ratio_window
    expr: |-
      sum_over_time(cartesia_slo:good:rate5m{{ $sel }}[{{ $slo.window }}])
      / sum_over_time(cartesia_slo:total:rate5m{{ $sel }}[{{ $slo.window }}])
    labels:
      slo: {{ $name }}
      slo_window: {{ $slo.window }}
  - record: cartesia_slo:objective:ratio
    expr: vector({{ $o }})
    labels:
      slo: {{ $name }}
      slo_window: {{ $slo.window }}
  - record: cartesia_slo:error_budget:remaining_ratio
    expr: 1 - (1 - cartesia_slo:sli:ratio_window{{ $sel }}) / (1 - {{ $o }})
    labels:
      slo: {{ $name }}
      slo_window: {{ $slo.window }}
  {{- range list (list "Fast" "1h" "5m" 14.4 "2m" "critical" 1.0 "pages: at this rate the budget is gone within days") (list "Slow" "6h" "30m" 6.0 "15m" "warning" 6.0 "opens a ticket: slower, but the budget runs out before the window ends") }}
  {{- $speed := index . 0 }}{{ $long := index . 1 }}{{ $short := index . 2 }}{{ $rate := index . 3 }}
  {{- $share := mulf 100.0 (divf (mulf $rate (index . 6)) (mulf $days 24.0)) }}
  - alert: CartesiaSloBurn{{ $speed }}
    expr: |-
      (1 - cartesia_slo:sli:ratio_rate{{ $long }}{{ $sel }}) / (1 - {{ $o }}) > {{ $rate }}
      and
      (1 - cartesia_slo:sli:ratio_rate{{ $short }}{{ $sel }}) / (1 - {{ $o }}) > {{ $rate }}
    for: {{ index . 4 }}
    labels:
      severity: {{ index . 5 }}
      slo: {{ $name }}
    annotations:
      summary: {{ printf "%s SLO: agent {{ $labels.cartesia_agent_id }}, deployment {{ $labels.cartesia_deployment_id }} burns its error budget {{ $value | humanize }}x as fast as allowed (last %s)" $sli.title $long | quote }}
      description: >-
        {{ $help }}. In the last {{ $long }} this deployment's share of turns over {{ $t }} was
        {{ "{{" }} $value | humanize {{ "}}" }} times the {{ $budget }} the SLO allows (the burn rate), and in the last
        {{ $short }} still above {{ $rate }} times. At {{ $rate }}x a {{ $slo.window }} error budget lasts
        {{ printf "%.1f" (divf $days $rate) }} days ({{ printf "%.1f" $share }}% of it burns per {{ $long }}). This alert
        {{ index . 7 }}. The {{ $short }} window lets it resolve minutes after the burn stops.
      runbook_url: https://github.com/otelbridge/otelbridge/blob/main/docs/alerts.md#cartesiasloburn{{ lower $speed }}
  {{- end }}
{{- end }}
{{- end }}
{{- end }}
