{{/* Names and labels. */}}
{{- define "distillgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "distillgate.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "distillgate.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "distillgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: distillgate
{{- end }}

{{- define "distillgate.gatewaySelector" -}}
app.kubernetes.io/name: {{ include "distillgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end }}

{{- define "distillgate.studentSelector" -}}
app.kubernetes.io/name: {{ include "distillgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: student
{{- end }}

{{- define "distillgate.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "distillgate.secretName" -}}
{{- default (printf "%s-secrets" (include "distillgate.fullname" .)) .Values.secrets.existingSecret }}
{{- end }}

{{- define "distillgate.gatewayServiceAccount" -}}
{{- printf "%s-gateway" (include "distillgate.fullname" .) }}
{{- end }}

{{- define "distillgate.jobServiceAccount" -}}
{{- printf "%s-redistill-job" (include "distillgate.fullname" .) }}
{{- end }}

{{- define "distillgate.dataClaim" -}}
{{- default (printf "%s-data" (include "distillgate.fullname" .)) .Values.data.existingClaim }}
{{- end }}

{{- define "distillgate.sqliteClaim" -}}
{{- default (printf "%s-pairs" (include "distillgate.fullname" .)) .Values.store.sqlite.existingClaim }}
{{- end }}

{{/* Refuse value combinations that would deploy something broken. */}}
{{- define "distillgate.validate" -}}
{{- if not (has .Values.store.type (list "sqlite" "postgres")) }}
{{- fail (printf "store.type must be sqlite or postgres, got %q" .Values.store.type) }}
{{- end }}
{{- if eq .Values.store.type "sqlite" }}
{{- if gt (int .Values.gateway.replicas) 1 }}
{{- fail (printf "store.type=sqlite supports exactly one gateway replica (gateway.replicas=%d): SQLite on a volume has a single writer. Use store.type=postgres for more replicas." (int .Values.gateway.replicas)) }}
{{- end }}
{{- if and .Values.gateway.autoscaling.enabled (gt (int .Values.gateway.autoscaling.maxReplicas) 1) }}
{{- fail "store.type=sqlite supports exactly one gateway replica, but gateway.autoscaling may scale to more: use store.type=postgres" }}
{{- end }}
{{- end }}
{{- if and (eq .Values.store.type "postgres") (not .Values.store.postgres.existingSecret) }}
{{- fail "store.type=postgres needs store.postgres.existingSecret (a Secret holding the SQLAlchemy URL under store.postgres.urlKey)" }}
{{- end }}
{{- if and .Values.student.enabled (gt (int .Values.student.replicas) 1) }}
{{- fail "student.replicas > 1 is not supported: promotions hot-load LoRA adapters through the student Service, which would reach only one pod" }}
{{- end }}
{{- if not (has .Values.redistill.runner (list "local" "kubernetes")) }}
{{- fail (printf "redistill.runner must be local or kubernetes, got %q" .Values.redistill.runner) }}
{{- end }}
{{- if and (eq .Values.redistill.runner "kubernetes") (eq .Values.store.type "sqlite") }}
{{- fail "redistill.runner=kubernetes needs store.type=postgres: the job reads pairs from the store, which a SQLite file on the gateway's volume cannot share" }}
{{- end }}
{{- if and (eq .Values.redistill.runner "kubernetes") (not .Values.data.enabled) }}
{{- fail "redistill.runner=kubernetes needs data.enabled: jobs write adapters to the shared data volume" }}
{{- end }}
{{- end }}

{{/* Env shared by the gateway and the re-distillation jobs: secrets and the store URL. */}}
{{- define "distillgate.commonEnv" -}}
- name: DISTILLGATE_CONFIG
  value: /etc/distillgate/config.yaml
{{- if eq .Values.store.type "postgres" }}
- name: DISTILLGATE__EVALUATOR__STORE__URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.store.postgres.existingSecret }}
      key: {{ .Values.store.postgres.urlKey }}
{{- end }}
{{- end }}

{{/* The distillgate config the ConfigMap carries: values.config plus what only the chart knows. */}}
{{- define "distillgate.config" -}}
{{- $cfg := deepCopy .Values.config }}
{{- $server := mustMergeOverwrite (default (dict) $cfg.server) (dict "host" "0.0.0.0" "port" (int .Values.gateway.port)) }}
{{- $_ := set $cfg "server" $server }}
{{- $upstreams := default (dict) $cfg.upstreams }}
{{- if and .Values.student.enabled (hasKey $upstreams .Values.student.upstreamName) }}
{{- $up := get $upstreams .Values.student.upstreamName }}
{{- if not $up.base_url }}
{{- $_ := set $up "base_url" (printf "http://%s-student:%d/v1" (include "distillgate.fullname" .) (int .Values.student.service.port)) }}
{{- end }}
{{- end }}
{{- $evaluator := default (dict) $cfg.evaluator }}
{{- if eq .Values.store.type "sqlite" }}
{{- $store := mustMergeOverwrite (default (dict) $evaluator.store) (dict "url" "sqlite:////var/lib/distillgate/pairs.db") }}
{{- $_ := set $evaluator "store" $store }}
{{- end }}
{{- $_ := set $cfg "evaluator" $evaluator }}
{{- $redistill := default (dict) $cfg.redistill }}
{{- $workdir := ternary (printf "%s/redistill" .Values.data.mountPath) "/tmp/distillgate/redistill" .Values.data.enabled }}
{{- $_ := set $redistill "workdir" $workdir }}
{{- $runner := dict "kind" .Values.redistill.runner "job_timeout_s" .Values.redistill.job.activeDeadlineSeconds }}
{{- if eq .Values.redistill.runner "kubernetes" }}
{{- $_ := set $runner "kubernetes" (dict "namespace" .Release.Namespace "in_cluster" true "job_template" (include "distillgate.jobTemplate" . | fromYaml)) }}
{{- end }}
{{- $_ := set $redistill "runner" $runner }}
{{- $_ := set $cfg "redistill" $redistill }}
{{- toYaml $cfg }}
{{- end }}

{{/* The batch/v1 Job the kubernetes runner creates per run (it adds the name and the run's args). */}}
{{- define "distillgate.jobTemplate" -}}
{{- $job := .Values.redistill.job -}}
apiVersion: batch/v1
kind: Job
metadata:
  labels:
    {{- include "distillgate.labels" . | nindent 4 }}
    app.kubernetes.io/component: redistill-job
spec:
  backoffLimit: {{ $job.backoffLimit }}
  activeDeadlineSeconds: {{ $job.activeDeadlineSeconds }}
  ttlSecondsAfterFinished: {{ $job.ttlSecondsAfterFinished }}
  template:
    metadata:
      labels:
        app.kubernetes.io/name: {{ include "distillgate.name" . }}
        app.kubernetes.io/instance: {{ .Release.Name }}
        app.kubernetes.io/component: redistill-job
    spec:
      serviceAccountName: {{ include "distillgate.jobServiceAccount" . }}
      automountServiceAccountToken: false
      restartPolicy: Never
      securityContext:
        {{- toYaml .Values.gateway.podSecurityContext | nindent 8 }}
      containers:
        - name: redistill
          image: {{ printf "%s:%s" (default .Values.image.repository $job.image.repository) (default (default .Chart.AppVersion .Values.image.tag) $job.image.tag) }}
          imagePullPolicy: {{ .Values.image.pullPolicy }}
          command: [distillgate]
          env:
            {{- include "distillgate.commonEnv" . | nindent 12 }}
          envFrom:
            - secretRef:
                name: {{ include "distillgate.secretName" . }}
          resources:
            {{- toYaml $job.resources | nindent 12 }}
          securityContext:
            {{- toYaml .Values.gateway.securityContext | nindent 12 }}
          volumeMounts:
            - {name: config, mountPath: /etc/distillgate, readOnly: true}
            - {name: data, mountPath: {{ .Values.data.mountPath }}}
            - {name: tmp, mountPath: /tmp}
      volumes:
        - name: config
          configMap:
            name: {{ include "distillgate.fullname" . }}-config
        - name: data
          persistentVolumeClaim:
            claimName: {{ include "distillgate.dataClaim" . }}
        - name: tmp
          emptyDir: {}
      {{- with $job.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $job.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end }}
