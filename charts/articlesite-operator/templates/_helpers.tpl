{{- define "aso.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "aso.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "aso.selectorLabels" -}}
app.kubernetes.io/name: {{ include "aso.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "aso.labels" -}}
{{ include "aso.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/*
Permissions on namespaced objects, exactly what the operator calls (docs/install.md, RBAC).
Server-side apply of a missing object needs create as well as patch.
*/}}
{{- define "aso.namespacedRules" -}}
- apiGroups: [articlesite.io]
  resources: [articlesites]
  verbs: [list, watch]
- apiGroups: [articlesite.io]
  resources: [articlesites/status]
  verbs: [patch]
# Owner references with blockOwnerDeletion on the children.
- apiGroups: [articlesite.io]
  resources: [articlesites/finalizers]
  verbs: [update]
- apiGroups: [apps]
  resources: [deployments, statefulsets]
  verbs: [get, list, watch, create, patch]
# Each site runs under its own ServiceAccount (with no RBAC of its own).
- apiGroups: [""]
  resources: [services, serviceaccounts]
  verbs: [get, list, watch, create, patch]
# Generated credentials are created once; update only for a requested write-token rotation.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, list, watch, create, update]
# A pod refused by admission shows only as a FailedCreate Event of its StatefulSet.
- apiGroups: [""]
  resources: [events]
  verbs: [list]
# The database claims (a watch-backed cache) and their expansion.
- apiGroups: [""]
  resources: [persistentvolumeclaims]
  verbs: [list, watch, patch]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, list, watch, create, patch]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, list, watch, create, patch]
# Deleted when spec.ingress goes away.
- apiGroups: [networking.k8s.io]
  resources: [ingresses]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
# High availability: watch app pods, restart a broken one through the Eviction API (so budgets
# hold), steer scale-down with pod-deletion-cost, force-delete pods of a node that is gone.
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch, patch, delete]
- apiGroups: [""]
  resources: [pods/eviction]
  verbs: [create]
# Rollback finds the last ReplicaSet whose pods were ready.
- apiGroups: [apps]
  resources: [replicasets]
  verbs: [list]
{{- end -}}
