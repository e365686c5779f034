{{/* The services: values key -> service (image and process name), and what each needs. */}}
{{- define "otbus.services" -}}
ingestHttp: {name: ingest-http, module: otbus_ingest_http, tokens: OTBUS_API_KEYS_FILE}
normalizer: {name: normalizer, module: otbus_normalizer}
eventStore: {name: event-store, module: otbus_event_store, database: true, tokens: OTBUS_API_TOKENS_FILE}
notifyBridge: {name: notify-bridge, module: otbus_notify_bridge, database: true, tokens: OTBUS_API_TOKENS_FILE}
zerobusSink: {name: zerobus-sink, module: otbus_zerobus_sink, zerobus: true}
ingestOpcua: {name: ingest-opcua, module: otbus_ingest_opcua, adapter: true}
ingestMqtt: {name: ingest-mqtt, module: otbus_ingest_mqtt, adapter: true}
ingestModbus: {name: ingest-modbus, module: otbus_ingest_modbus, adapter: true}
{{- end -}}

{{- define "otbus.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "otbus.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/part-of: otbus
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{- define "otbus.selector" -}}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/name: {{ .name }}
{{- end -}}
