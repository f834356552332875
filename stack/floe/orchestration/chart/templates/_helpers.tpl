{{- define "floe.labels" -}}
app.kubernetes.io/part-of: floe
app.kubernetes.io/component: orchestration
{{- end }}

{{- define "floe.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities: {drop: [ALL]}
{{- end }}

{{/* Environment every Dagster process shares: its metadata database and the catalog. */}}
{{- define "floe.dagsterEnv" -}}
- name: DAGSTER_PG_PASSWORD
  valueFrom: {secretKeyRef: {name: floe-postgres, key: POSTGRES_PASSWORD}}
- name: POLARIS_CLIENT_ID
  valueFrom: {secretKeyRef: {name: floe-polaris, key: CLIENT_ID}}
- name: POLARIS_CLIENT_SECRET
  valueFrom: {secretKeyRef: {name: floe-polaris, key: CLIENT_SECRET}}
- name: AWS_ACCESS_KEY_ID
  valueFrom: {secretKeyRef: {name: floe-minio, key: MINIO_ROOT_USER}}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom: {secretKeyRef: {name: floe-minio, key: MINIO_ROOT_PASSWORD}}
- {name: DAGSTER_HOME, value: /opt/dagster/dagster_home}
- {name: POLARIS_URI, value: {{ .Values.polaris.uri | quote }}}
- {name: POLARIS_CATALOG, value: {{ .Values.polaris.catalog | quote }}}
- {name: S3_ENDPOINT, value: "http://floe-minio:9000"}
- {name: OTEL_EXPORTER_OTLP_ENDPOINT, value: {{ .Values.otel.endpoint | quote }}}
- {name: OPENLINEAGE_URL, value: "http://floe-marquez:5000"}
{{- end }}

{{- define "floe.dagsterMounts" -}}
- {name: instance, mountPath: /opt/dagster/dagster_home/dagster.yaml, subPath: dagster.yaml, readOnly: true}
- {name: instance, mountPath: /opt/dagster/app/workspace.yaml, subPath: workspace.yaml, readOnly: true}
- {name: tmp, mountPath: /tmp}
- {name: home, mountPath: /opt/dagster/dagster_home/storage}
{{- end }}

{{- define "floe.dagsterVolumes" -}}
- name: instance
  configMap: {name: floe-dagster-instance}
- {name: tmp, emptyDir: {}}
- {name: home, emptyDir: {}}
{{- end }}
