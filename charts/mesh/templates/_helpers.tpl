{{- define "mesh.labels" -}}
app.kubernetes.io/part-of: mesh
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "mesh.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- /*
The ClusterRole of what a waypoint's discovery reads, and the
ClusterRoleBinding whose subjects the CA's waypoint controller keeps.
*/ -}}
{{- define "mesh.waypointReader" -}}
{{ .Release.Name }}-waypoint-reader
{{- end -}}

{{- define "mesh.caHost" -}}
mesh-ca.{{ .Release.Namespace }}.svc
{{- end -}}

{{- /*
The mesh-cni container: `install` (the init container) or, with watch,
`install --watch` (beside the agent). The release's namespace is always
excluded: the CA runs there and must start on a node whose agent is not up
yet, or neither would ever start.
*/ -}}
{{- define "mesh.cniContainer" -}}
{{- $excluded := uniq (append .Values.cni.excludeNamespaces .Release.Namespace) -}}
image: {{ include "mesh.image" . }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
command:
  - /usr/local/bin/mesh-cni
args:
  - install
  - --cni-bin-dir
  - /host/opt/cni/bin
  - --cni-conf-dir
  - /host/etc/cni/net.d
  - --agent-socket
  - {{ .Values.agent.cniSocket | quote }}
  - --exclude-namespaces
  - {{ join "," $excluded | quote }}
  - --timeout
  - {{ .Values.cni.timeout | quote }}
  {{- if .watch }}
  - --watch
  - --poll-interval
  - {{ .Values.cni.pollInterval | quote }}
  {{- end }}
# Root for the host's root-owned plugin and config dirs, and nothing else:
# no capability is needed to write files root owns.
securityContext:
  runAsUser: 0
  privileged: false
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  capabilities:
    drop: [ALL]
  seccompProfile:
    type: RuntimeDefault
resources:
  {{- toYaml .Values.cni.resources | nindent 2 }}
volumeMounts:
  - name: cni-bin
    mountPath: /host/opt/cni/bin
  - name: cni-conf
    mountPath: /host/etc/cni/net.d
{{- end -}}
