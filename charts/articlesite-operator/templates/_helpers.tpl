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
# patch: removes the articlesite.io/switchover and articlesite.io/backup annotations once the
# request is handed on.
- apiGroups: [articlesite.io]
  resources: [articlesites]
  verbs: [list, watch, patch]
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
# The database's Patroni configuration; list and watch (metadata only, by the operator's label)
# so that a hand edit is restored at once.
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, list, watch, create, patch]
# The database pods' Role and RoleBinding (Patroni's API access). RBAC lets the operator grant
# only what it holds itself, so it holds Patroni's rules (endpoints and pods below) rather than
# `escalate` or `bind`, which would let it grant anything.
# delete: the backup Jobs' RoleBinding when spec.backup is removed.
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [get, list, watch, create, patch, delete]
# Backups (spec.backup): the scheduled CronJobs (deleted with spec.backup), the Jobs outside
# the schedules (the first backup, one asked for), and the Jobs' results for the status.
- apiGroups: [batch]
  resources: [cronjobs]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [batch]
  resources: [jobs]
  verbs: [list, watch, create]
# Only because the backup Jobs' Role grants it (exec into the site's database pods, by name):
# the operator itself never execs.
- apiGroups: [""]
  resources: [pods/exec]
  verbs: [create, get]
# Patroni's objects: list (its state), create and patch (the failover object, the synchronous
# mode in the config object), delete (the endpoints controller's leftover of the client Service
# on upgrade); get, watch and update only because the Role it creates grants them.
- apiGroups: [""]
  resources: [endpoints]
  verbs: [get, list, watch, create, patch, update, delete]
# The client Service's EndpointSlices the endpointslice controller left from before the
# Service lost its selector (upgrade to Patroni).
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, delete]
# The database claims (a watch-backed cache) and their expansion; delete: the claim of a
# standby that keeps failing, so that Patroni clones the primary into a new volume.
- apiGroups: [""]
  resources: [persistentvolumeclaims]
  verbs: [list, watch, patch, delete]
# delete: the primary's budget when a site goes back to one instance.
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, list, watch, create, patch]
# Deleted when spec.ingress goes away.
- apiGroups: [networking.k8s.io]
  resources: [ingresses]
  verbs: [get, list, watch, create, patch, delete]
# The app's HorizontalPodAutoscaler (spec.app.autoscaling); deleted when that goes away.
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
# High availability: watch app pods, restart a broken one through the Eviction API (so budgets
# hold), steer scale-down with pod-deletion-cost, force-delete pods of a node that is gone.
# update: only because the database pods' Role grants it to Patroni.
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch, patch, update, delete]
- apiGroups: [""]
  resources: [pods/eviction]
  verbs: [create]
# Rollback finds the last ReplicaSet whose pods were ready.
- apiGroups: [apps]
  resources: [replicasets]
  verbs: [list]
{{- end -}}
