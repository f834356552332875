{{- define "floe.labels" -}}
app.kubernetes.io/part-of: floe
app.kubernetes.io/component: semantic-layer
{{- end }}

{{- define "floe.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities: {drop: [ALL]}
{{- end }}

{{/* Cube API and refresh worker: DuckDB with the Iceberg catalog, Cube Store as the cache. */}}
{{- define "floe.cubeEnv" -}}
- name: CUBEJS_API_SECRET
  valueFrom: {secretKeyRef: {name: floe-cube, key: CUBEJS_API_SECRET}}
- name: CUBEJS_DB_DUCKDB_S3_ACCESS_KEY_ID
  valueFrom: {secretKeyRef: {name: floe-minio, key: MINIO_ROOT_USER}}
- name: CUBEJS_DB_DUCKDB_S3_SECRET_ACCESS_KEY
  valueFrom: {secretKeyRef: {name: floe-minio, key: MINIO_ROOT_PASSWORD}}
- name: POLARIS_CLIENT_ID
  valueFrom: {secretKeyRef: {name: floe-polaris, key: CLIENT_ID}}
- name: POLARIS_CLIENT_SECRET
  valueFrom: {secretKeyRef: {name: floe-polaris, key: CLIENT_SECRET}}
- {name: CUBEJS_DB_TYPE, value: duckdb}
- {name: CUBEJS_DB_DUCKDB_S3_ENDPOINT, value: {{ .Values.s3.endpoint | trimPrefix "http://" | quote }}}
- {name: CUBEJS_DB_DUCKDB_S3_USE_SSL, value: "false"}
- {name: CUBEJS_DB_DUCKDB_S3_URL_STYLE, value: path}
- {name: CUBEJS_DB_DUCKDB_EXTENSIONS, value: "iceberg,httpfs"}
- {name: POLARIS_URI, value: {{ .Values.polaris.uri | quote }}}
- {name: POLARIS_CATALOG, value: {{ .Values.polaris.catalog | quote }}}
- {name: CUBEJS_CUBESTORE_HOST, value: floe-cube-store-router}
- {name: CUBEJS_CUBESTORE_PORT, value: "3030"}
- {name: CUBEJS_SQL_PORT, value: "15432"}
- {name: CUBEJS_TELEMETRY, value: "false"}
- {name: OTEL_EXPORTER_OTLP_ENDPOINT, value: "http://floe-jaeger-collector:4317"}
{{- end }}

{{/* Cube Store: metadata and pre-aggregations in MinIO, a local cache on disk. */}}
{{- define "floe.storeEnv" -}}
- name: CUBESTORE_AWS_ACCESS_KEY_ID
  valueFrom: {secretKeyRef: {name: floe-minio, key: MINIO_ROOT_USER}}
- name: CUBESTORE_AWS_SECRET_ACCESS_KEY
  valueFrom: {secretKeyRef: {name: floe-minio, key: MINIO_ROOT_PASSWORD}}
- {name: CUBESTORE_S3_BUCKET, value: {{ .Values.s3.bucket | quote }}}
- {name: CUBESTORE_S3_SUB_PATH, value: {{ .Values.s3.preAggregationsPrefix | quote }}}
- {name: CUBESTORE_S3_REGION, value: us-east-1}
- {name: CUBESTORE_S3_ENDPOINT, value: {{ .Values.s3.endpoint | quote }}}
- {name: CUBESTORE_META_ADDR, value: "floe-cube-store-router:9999"}
- {name: CUBESTORE_WORKERS, value: {{ include "floe.storeWorkers" . | quote }}}
- {name: CUBESTORE_DATA_DIR, value: /cube/data}
- {name: CUBESTORE_TELEMETRY, value: "false"}
{{- end }}

{{/* worker-0:10001,worker-1:10001,... through the headless service. */}}
{{- define "floe.storeWorkers" -}}
{{- $names := list }}
{{- range $i := until (int .Values.store.workers) }}
{{- $names = append $names (printf "floe-cube-store-worker-%d.floe-cube-store-worker:10001" $i) }}
{{- end }}
{{- join "," $names }}
{{- end }}

{{- define "floe.storeVolumeClaims" -}}
{{- if eq .Values.store.storage "claim" }}
volumeClaimTemplates:
  - metadata: {name: data}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {requests: {storage: {{ .Values.store.size }}}}
{{- end }}
{{- end }}

{{- define "floe.storeDataVolume" -}}
{{- if eq .Values.store.storage "emptyDir" }}
- {name: data, emptyDir: {}}
{{- end }}
{{- end }}
