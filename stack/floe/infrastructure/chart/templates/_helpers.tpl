{{/* Labels every object of the chart carries. */}}
{{- define "floe.labels" -}}
app.kubernetes.io/part-of: floe
app.kubernetes.io/managed-by: driftless
{{- end }}

{{/* The restricted container security context the baseline policies require. */}}
{{- define "floe.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities: {drop: [ALL]}
{{- end }}

{{/* A data volume: a claim template's name, or an emptyDir in the local profile. */}}
{{- define "floe.dataVolume" -}}
{{- if eq .Values.storage "emptyDir" }}
- name: data
  emptyDir: {}
{{- end }}
{{- end }}

{{- define "floe.claimTemplates" -}}
{{- if eq .root.Values.storage "claim" }}
volumeClaimTemplates:
  - metadata: {name: data}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {requests: {storage: {{ .size }}}}
{{- end }}
{{- end }}
