{{/* The release's name for every object: <release>-vae-serve, or the release name alone when it
already says vae-serve; at most 63 characters (a DNS label). */}}
{{- define "vae-serve.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "vae-serve.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "vae-serve.labels" -}}
{{ include "vae-serve.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* The image: the CUDA one when the GPU is on. */}}
{{- define "vae-serve.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion -}}
{{- if .Values.gpu.enabled -}}
{{- $tag = .Values.image.gpuTag | default (printf "%s-gpu" $tag) -}}
{{- end -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}

{{/* Where the pods read the model repository. */}}
{{- define "vae-serve.modelRepository" -}}
{{- if eq .Values.model.source "image" -}}/models{{- else -}}/mnt/models{{- end -}}
{{- end -}}

{{- define "vae-serve.claimName" -}}
{{- .Values.model.pvc.claimName | default (printf "%s-models" (include "vae-serve.fullname" .)) -}}
{{- end -}}

{{/* The pods' series in Prometheus: their namespace, and pod names of this Deployment
(<fullname>-<replicaset hash>-<pod suffix>). */}}
{{- define "vae-serve.podSelector" -}}
namespace="{{ .Release.Namespace }}",pod=~"{{ include "vae-serve.fullname" . }}-[a-z0-9]+-[a-z0-9]+"
{{- end -}}

{{/* What KEDA scales on, summed over the pods (KEDA's AverageValue divides by the replicas):
queue-time: seconds spent waiting in the batchers' queues per second, i.e. requests waiting on
average (Little's law); in-flight: data-plane requests being handled now. */}}
{{- define "vae-serve.scalingQuery" -}}
{{- if eq .Values.autoscaling.keda.signal "queue-time" -}}
sum(rate(vae_serve_queue_duration_seconds_sum{ {{- include "vae-serve.podSelector" . -}} }[1m]))
{{- else -}}
sum(vae_serve_requests_in_flight{ {{- include "vae-serve.podSelector" . -}} })
{{- end -}}
{{- end -}}

{{/* What values.schema.json cannot say: relations between values. */}}
{{- define "vae-serve.validate" -}}
{{- if gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas) -}}
{{- fail "autoscaling.minReplicas must not exceed autoscaling.maxReplicas" -}}
{{- end -}}
{{- if and (eq .Values.model.source "pvc") .Values.model.pvc.create (not .Values.model.pvc.size) -}}
{{- fail "model.pvc.size is needed to create the claim" -}}
{{- end -}}
{{- end -}}

{{/* Mutual TLS: TLS on and a client CA named. */}}
{{- define "vae-serve.mutualTLS" -}}
{{- if and .Values.tls.enabled .Values.tls.clientCA.secretName -}}true{{- end -}}
{{- end -}}

{{/* A probe on `path` with its `settings` (probes.*): the kubelet's HTTP(S) GET; under mutual TLS,
where the kubelet has no client certificate, the same GET from inside the pod with the probe's
certificate (exec), or without one a TCP connect to the HTTP port. */}}
{{- define "vae-serve.probe" -}}
{{- $v := .root.Values -}}
{{- $settings := deepCopy .settings -}}
{{- if not (include "vae-serve.mutualTLS" .root) -}}
httpGet: {path: {{ .path }}, port: http, scheme: {{ ternary "HTTPS" "HTTP" $v.tls.enabled }}}
{{- else if $v.tls.clientCA.probeSecretName -}}
{{- $script := list
  "import http.client, ssl, sys"
  "c = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)"
  "c.check_hostname = False"
  "c.verify_mode = ssl.CERT_NONE"
  "c.load_cert_chain('/etc/vae-serve/probe-tls/tls.crt', '/etc/vae-serve/probe-tls/tls.key')"
  "h = http.client.HTTPSConnection('127.0.0.1', int(sys.argv[1]), context=c, timeout=10)"
  "h.request('GET', sys.argv[2])"
  "sys.exit(h.getresponse().status != 200)" -}}
{{- $_ := set $settings "timeoutSeconds" ($settings.timeoutSeconds | default 3) -}}
exec:
  # The kubelet's HTTPS GET (the server's certificate not verified), with a client certificate.
  command: [python, -I, -c, {{ join "; " $script | quote }}, {{ $v.ports.http | quote }}, {{ .path }}]
{{- else -}}
tcpSocket: {port: http}
{{- end }}
{{- with $settings }}
{{ toYaml . }}
{{- end }}
{{- end -}}
