//! The node's CNI network configuration as `mesh-cni install` edits it:
//! which file the runtime reads, and that file's text with or without the
//! mesh-cni entry. Text in, text out, no I/O, so that every shape a
//! network plugin writes is unit-tested; `install` reads and writes the
//! files.
//!
//! Values other than the plugin list are kept as written (raw JSON, in
//! their order): the network plugin owns the file, and a diff of it should
//! show the one entry mesh added, not a reformatted file.
use std::fmt;

use serde::{
    Deserialize, Deserializer,
    de::{MapAccess, Visitor},
};
use serde_json::{Value, value::RawValue};

use crate::plugin::SUPPORTED_VERSIONS;

/// The entry's `type`: the name of the binary in the runtime's plugin dir.
pub const PLUGIN_TYPE: &str = "mesh-cni";

/// The files libcni (containerd, CRI-O) loads from its conf dir; a
/// `.conflist` holds a plugin list, the others one plugin.
pub const EXTENSIONS: [&str; 3] = [".conf", ".conflist", ".json"];

/// What the installer puts into the plugin list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub agent_socket: String,
    pub exclude_namespaces: Vec<String>,
    pub timeout: String,
}

impl Entry {
    /// The entry as one line, `type` first so that it reads as the others do.
    pub fn to_json(&self) -> String {
        format!(
            r#"{{"type": {}, "agentSocket": {}, "excludeNamespaces": {}, "timeout": {}}}"#,
            Value::from(PLUGIN_TYPE),
            Value::from(self.agent_socket.as_str()),
            Value::from(self.exclude_namespaces.clone()),
            Value::from(self.timeout.as_str())
        )
    }

    fn value(&self) -> Value {
        serde_json::json!({
            "type": PLUGIN_TYPE,
            "agentSocket": self.agent_socket,
            "excludeNamespaces": self.exclude_namespaces,
            "timeout": self.timeout,
        })
    }
}

/// Why a configuration file cannot be edited: the file, what is wrong and
/// what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfError {
    pub file: String,
    pub problem: String,
    pub fix: String,
}

impl fmt::Display for ConfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}; {}", self.file, self.problem, self.fix)
    }
}

impl std::error::Error for ConfError {}

/// Whether a file name is one the runtime loads.
pub fn is_config(name: &str) -> bool {
    EXTENSIONS.iter().any(|ext| name.ends_with(ext)) && !name.starts_with('.')
}

/// The file the runtime uses: libcni sorts the conf dir's config files by
/// name (byte order) and containerd and CRI-O take the first.
pub fn runtime_config<S: AsRef<str>>(names: &[S]) -> Option<&str> {
    names
        .iter()
        .map(AsRef::as_ref)
        .filter(|n| is_config(n))
        .min()
}

/// A JSON object with its members in file order, values as written.
struct Object(Vec<(String, Box<RawValue>)>);

impl<'de> Deserialize<'de> for Object {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Object;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Object, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry::<String, Box<RawValue>>()? {
                    members.push(member);
                }
                Ok(Object(members))
            }
        }
        d.deserialize_map(V)
    }
}

impl Object {
    fn get(&self, key: &str) -> Option<&RawValue> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| &**v)
    }

    fn string(&self, key: &str) -> Option<String> {
        self.get(key)
            .and_then(|v| serde_json::from_str::<String>(v.get()).ok())
    }
}

/// One entry of the plugin list.
struct Plugin {
    kind: String,
    raw: Box<RawValue>,
}

/// A network configuration as a plugin list, whichever form its file has.
pub struct NetworkConfig {
    file: String,
    /// The list's members but `plugins`, as written, with the position
    /// `plugins` had among them.
    members: Vec<(String, Box<RawValue>)>,
    plugins_at: usize,
    plugins: Vec<Plugin>,
    /// A single-plugin file (`.conf`, `.json`): written back as a
    /// `.conflist`, as istio-cni does, since only a list can chain.
    single: bool,
}

impl NetworkConfig {
    /// Reads a config file's text; `file` names it in errors (and its
    /// extension says which form it has).
    pub fn parse(file: &str, text: &str) -> Result<Self, ConfError> {
        let err = |problem: String, fix: &str| ConfError {
            file: file.to_owned(),
            problem,
            fix: fix.to_owned(),
        };
        let top: Object = serde_json::from_str(text).map_err(|e| {
            err(
                format!("not a JSON object: {e}"),
                "the container runtime cannot read it either; have the network plugin write it again (restart its pod) or fix it by hand",
            )
        })?;
        let single = !file.ends_with(".conflist");
        let (members, plugins_at, entries) = if single {
            if top.get("plugins").is_some() && top.get("type").is_none() {
                return Err(err(
                    "a plugin list (\"plugins\") in a single-plugin file".into(),
                    "the runtime reads only .conflist files as lists: rename it to .conflist",
                ));
            }
            // The list keeps the plugin's version and network name; the
            // plugin's own object goes into it unchanged.
            let members: Vec<_> = ["cniVersion", "name"]
                .into_iter()
                .filter_map(|k| top.get(k).map(|v| (k.to_owned(), v.to_owned())))
                .collect();
            let at = members.len();
            let whole = RawValue::from_string(text.trim().to_owned()).map_err(|e| {
                err(
                    format!("not valid JSON: {e}"),
                    "fix it or have the network plugin write it again",
                )
            })?;
            (members, at, vec![whole])
        } else {
            let mut members = top.0;
            let at = members
                .iter()
                .rposition(|(k, _)| k == "plugins")
                .ok_or_else(|| {
                    err(
                        "no \"plugins\" list".into(),
                        "a .conflist lists its plugins under \"plugins\"; have the network plugin write it again",
                    )
                })?;
            let (_, raw) = members.remove(at);
            members.retain(|(k, _)| k != "plugins");
            let entries: Vec<Box<RawValue>> = serde_json::from_str(raw.get()).map_err(|e| {
                err(
                    format!("\"plugins\" is not a list: {e}"),
                    "have the network plugin write it again",
                )
            })?;
            (members, at, entries)
        };
        let plugins = entries
            .into_iter()
            .enumerate()
            .map(|(i, raw)| {
                let at = if single {
                    "the plugin".to_owned()
                } else {
                    format!("plugins[{i}]")
                };
                let object: Object = serde_json::from_str(raw.get()).map_err(|e| {
                    err(
                        format!("{at} is not an object: {e}"),
                        "have the network plugin write it again",
                    )
                })?;
                let kind = object.string("type").filter(|t| !t.is_empty()).ok_or_else(|| {
                    err(
                        format!("{at} has no \"type\""),
                        "every plugin names its binary in \"type\"; have the network plugin write it again",
                    )
                })?;
                Ok(Plugin { kind, raw })
            })
            .collect::<Result<Vec<_>, ConfError>>()?;
        Ok(Self {
            file: file.to_owned(),
            members,
            plugins_at,
            plugins,
            single,
        })
    }

    fn member(&self, key: &str) -> Option<String> {
        self.members
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| serde_json::from_str::<String>(v.get()).ok())
    }

    fn err(&self, problem: String, fix: &str) -> ConfError {
        ConfError {
            file: self.file.clone(),
            problem,
            fix: fix.to_owned(),
        }
    }

    /// The plugin that gives pods their interface: the first that is not
    /// mesh-cni. Its binary tells which directory the runtime runs
    /// plugins from.
    pub fn network_plugin(&self) -> Result<&str, ConfError> {
        self.plugins
            .iter()
            .map(|p| p.kind.as_str())
            .find(|k| *k != PLUGIN_TYPE)
            .ok_or_else(|| {
                self.err(
                    "no network plugin besides mesh-cni".into(),
                    "mesh-cni is chained after the plugin that gives pods their interface; install the network plugin (Calico, Cilium, flannel, ...) first",
                )
            })
    }

    /// The name the file is written under: a single-plugin file becomes
    /// `<stem>.conflist`, which sorts where the old name did (the old
    /// file is removed, or it would sort first and still be used).
    pub fn list_name(&self) -> String {
        if !self.single {
            return self.file.clone();
        }
        let stem = EXTENSIONS
            .iter()
            .find_map(|ext| self.file.strip_suffix(ext))
            .unwrap_or(&self.file);
        format!("{stem}.conflist")
    }

    /// Whether this is a single-plugin file that must be rewritten as a list.
    pub fn single(&self) -> bool {
        self.single
    }

    /// The text with `entry` as the list's mesh-cni plugin: appended after
    /// the others, or an existing mesh-cni entry updated in place (and any
    /// second one dropped). `None` when the file already says exactly
    /// that, so that an unchanged file is never rewritten (the runtime
    /// reloads its config on every write).
    pub fn with_entry(&self, entry: &Entry) -> Result<Option<String>, ConfError> {
        let version = self.member("cniVersion").unwrap_or_default();
        if !SUPPORTED_VERSIONS.contains(&version.as_str()) {
            return Err(self.err(
                format!("cniVersion {version:?} is one mesh-cni cannot read"),
                &format!(
                    "mesh-cni reads {}; the runtime passes the list's version to every plugin, so every pod's ADD would fail. Upgrade the network plugin's config",
                    SUPPORTED_VERSIONS.join(", ")
                ),
            ));
        }
        if self.member("name").is_none() {
            return Err(self.err(
                "no network \"name\"".into(),
                "the runtime refuses a list without one; have the network plugin write it again",
            ));
        }
        self.network_plugin()?;
        let wanted = entry.value();
        let ours: Vec<usize> = (0..self.plugins.len())
            .filter(|&i| self.plugins[i].kind == PLUGIN_TYPE)
            .collect();
        let up_to_date = ours.len() == 1
            && serde_json::from_str::<Value>(self.plugins[ours[0]].raw.get()).ok() == Some(wanted);
        if up_to_date && !self.single {
            return Ok(None);
        }
        let line = entry.to_json();
        let mut raws: Vec<&str> = Vec::new();
        for (i, p) in self.plugins.iter().enumerate() {
            if p.kind != PLUGIN_TYPE {
                raws.push(p.raw.get());
            } else if Some(&i) == ours.first() {
                raws.push(&line);
            }
        }
        if ours.is_empty() {
            raws.push(&line);
        }
        Ok(Some(self.render(&raws)))
    }

    /// The text without any mesh-cni entry; `None` when it has none.
    pub fn without_entry(&self) -> Option<String> {
        if !self.plugins.iter().any(|p| p.kind == PLUGIN_TYPE) {
            return None;
        }
        let raws: Vec<&str> = self
            .plugins
            .iter()
            .filter(|p| p.kind != PLUGIN_TYPE)
            .map(|p| p.raw.get())
            .collect();
        Some(self.render(&raws))
    }

    /// The list, two-space indented; members and other plugins as written.
    fn render(&self, plugins: &[&str]) -> String {
        let mut lines: Vec<String> = self
            .members
            .iter()
            .map(|(k, v)| format!("  {}: {}", Value::from(k.as_str()), v.get()))
            .collect();
        let list = if plugins.is_empty() {
            "[]".to_owned()
        } else {
            format!("[\n    {}\n  ]", plugins.join(",\n    "))
        };
        lines.insert(
            self.plugins_at.min(lines.len()),
            format!("  \"plugins\": {list}"),
        );
        format!("{{\n{}\n}}\n", lines.join(",\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            agent_socket: "/var/run/mesh/cni.sock".into(),
            exclude_namespaces: vec!["kube-system".into(), "mesh-system".into()],
            timeout: "10s".into(),
        }
    }

    /// What calico-node's install-cni writes (trimmed of nothing that matters).
    const CALICO: &str = r#"{
  "name": "k8s-pod-network",
  "cniVersion": "0.3.1",
  "plugins": [
    {
      "type": "calico",
      "log_level": "info",
      "log_file_path": "/var/log/calico/cni/cni.log",
      "datastore_type": "kubernetes",
      "nodename": "node-1",
      "mtu": 0,
      "ipam": {"type": "calico-ipam"},
      "policy": {"type": "k8s"},
      "kubernetes": {"kubeconfig": "/etc/cni/net.d/calico-kubeconfig"}
    },
    {
      "type": "portmap",
      "snat": true,
      "capabilities": {"portMappings": true}
    },
    {
      "type": "bandwidth",
      "capabilities": {"bandwidth": true}
    }
  ]
}
"#;

    /// cilium-agent's 05-cilium.conflist.
    const CILIUM: &str = r#"{
  "cniVersion": "0.3.1",
  "name": "cilium",
  "plugins": [
    {
       "type": "cilium-cni",
       "enable-debug": false,
       "log-file": "/var/run/cilium/cilium-cni.log"
    }
  ]
}"#;

    /// flannel's 10-flannel.conflist (flannel delegating to bridge).
    const FLANNEL: &str = r#"{"name":"cbr0","cniVersion":"0.3.1","plugins":[{"type":"flannel","delegate":{"hairpinMode":true,"isDefaultGateway":true}},{"type":"portmap","capabilities":{"portMappings":true}}]}"#;

    /// A single-plugin bridge .conf, as kubenet-era nodes and kind's docs have.
    const BRIDGE_CONF: &str = r#"{
    "cniVersion": "1.0.0",
    "name": "bridge",
    "type": "bridge",
    "bridge": "cni0",
    "isGateway": true,
    "ipMasq": true,
    "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.1.0/24"}]], "routes": [{"dst": "0.0.0.0/0"}]}
}"#;

    fn value(text: &str) -> Value {
        serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
    }

    fn inserted(file: &str, text: &str) -> String {
        NetworkConfig::parse(file, text)
            .unwrap()
            .with_entry(&entry())
            .unwrap()
            .expect("a file without the entry is rewritten")
    }

    #[test]
    fn the_runtime_uses_the_first_config_file_by_name() {
        let names = [
            "99-loopback.conf",
            "10-calico.conflist",
            "calico-kubeconfig",
            "05-cilium.conflist.cilium_bak",
            ".05-x.conflist",
            "87-podman.conflist",
        ];
        assert_eq!(runtime_config(&names), Some("10-calico.conflist"));
        assert_eq!(runtime_config(&["calico-kubeconfig", "README"]), None);
        // Byte order, as Go's sort.Strings: a .conf sorts before the
        // .conflist of the same stem.
        assert_eq!(
            runtime_config(&["10-x.conflist", "10-x.conf"]),
            Some("10-x.conf")
        );
        assert_eq!(runtime_config(&["b.json", "a.conf"]), Some("a.conf"));
    }

    #[test]
    fn calico_gets_the_entry_after_its_plugins_and_keeps_the_rest_as_written() {
        let out = inserted("10-calico.conflist", CALICO);
        let v = value(&out);
        let plugins = v["plugins"].as_array().unwrap();
        let kinds: Vec<&str> = plugins
            .iter()
            .map(|p| p["type"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["calico", "portmap", "bandwidth", "mesh-cni"]);
        assert_eq!(plugins[3], entry().value());
        assert_eq!(
            plugins[..3],
            value(CALICO)["plugins"].as_array().unwrap()[..]
        );
        // Members keep their order ("name" before "cniVersion" here) and
        // the other plugins their text.
        assert!(out.find("\"name\"").unwrap() < out.find("\"cniVersion\"").unwrap());
        assert!(out.contains(r#""ipam": {"type": "calico-ipam"}"#), "{out}");
        // Removing the entry again gives the same plugins back.
        let back = NetworkConfig::parse("10-calico.conflist", &out)
            .unwrap()
            .without_entry()
            .unwrap();
        assert_eq!(value(&back), value(CALICO));
    }

    #[test]
    fn cilium_and_flannel_lists_get_the_entry_last() {
        for (file, text, network) in [
            ("05-cilium.conflist", CILIUM, "cilium-cni"),
            ("10-flannel.conflist", FLANNEL, "flannel"),
        ] {
            let parsed = NetworkConfig::parse(file, text).unwrap();
            assert_eq!(parsed.network_plugin().unwrap(), network);
            assert_eq!(parsed.list_name(), file);
            let v = value(&parsed.with_entry(&entry()).unwrap().unwrap());
            let plugins = v["plugins"].as_array().unwrap();
            assert_eq!(plugins.last().unwrap(), &entry().value(), "{file}");
            assert_eq!(plugins[0]["type"], network);
            assert_eq!(v["cniVersion"], "0.3.1");
            assert_eq!(v["name"], value(text)["name"]);
        }
    }

    #[test]
    fn a_single_plugin_conf_becomes_a_list_holding_it() {
        let parsed = NetworkConfig::parse("10-bridge.conf", BRIDGE_CONF).unwrap();
        assert!(parsed.single());
        assert_eq!(parsed.list_name(), "10-bridge.conflist");
        assert_eq!(parsed.network_plugin().unwrap(), "bridge");
        let v = value(&parsed.with_entry(&entry()).unwrap().unwrap());
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(v["name"], "bridge");
        let plugins = v["plugins"].as_array().unwrap();
        assert_eq!(plugins.len(), 2);
        assert_eq!(plugins[0], value(BRIDGE_CONF));
        assert_eq!(plugins[1], entry().value());
        assert_eq!(
            NetworkConfig::parse("bridge.json", BRIDGE_CONF)
                .unwrap()
                .list_name(),
            "bridge.conflist"
        );
    }

    #[test]
    fn a_file_with_the_entry_is_left_alone_and_an_old_entry_is_updated_in_place() {
        let once = inserted("10-calico.conflist", CALICO);
        let parsed = NetworkConfig::parse("10-calico.conflist", &once).unwrap();
        assert_eq!(parsed.with_entry(&entry()).unwrap(), None);
        // Other settings: the entry is rewritten where it is, not appended.
        let mut other = entry();
        other.timeout = "20s".into();
        other.exclude_namespaces = vec!["kube-system".into()];
        let v = value(&parsed.with_entry(&other).unwrap().unwrap());
        let plugins = v["plugins"].as_array().unwrap();
        assert_eq!(plugins.len(), 4);
        assert_eq!(plugins[3], other.value());
        // An entry someone wrote by hand in the middle, plus a duplicate:
        // the first is updated, the second dropped.
        let by_hand = r#"{"cniVersion":"1.0.0","name":"n","plugins":[
            {"type":"ptp"},{"type":"mesh-cni"},{"type":"portmap"},{"type":"mesh-cni","timeout":"1s"}]}"#;
        let v = value(
            &NetworkConfig::parse("n.conflist", by_hand)
                .unwrap()
                .with_entry(&entry())
                .unwrap()
                .unwrap(),
        );
        let kinds: Vec<&str> = v["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["type"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["ptp", "mesh-cni", "portmap"]);
        assert_eq!(v["plugins"][1], entry().value());
        // A file without the entry has nothing to remove.
        assert!(
            NetworkConfig::parse("10-calico.conflist", CALICO)
                .unwrap()
                .without_entry()
                .is_none()
        );
    }

    #[test]
    fn malformed_or_unusable_files_are_refused_naming_the_file_and_the_problem() {
        let refused = |file: &str, text: &str| -> ConfError {
            match NetworkConfig::parse(file, text) {
                Err(e) => e,
                Ok(c) => c.with_entry(&entry()).unwrap_err(),
            }
        };
        let e = refused("10-calico.conflist", &CALICO[..CALICO.len() / 2]);
        assert_eq!(e.file, "10-calico.conflist");
        assert!(e.problem.contains("not a JSON object"), "{e}");
        assert!(e.to_string().starts_with("10-calico.conflist: "), "{e}");
        let e = refused("a.conflist", "[1,2]");
        assert!(e.problem.contains("not a JSON object"), "{e}");
        let e = refused("a.conflist", r#"{"cniVersion":"0.3.1","name":"n"}"#);
        assert!(e.problem.contains("\"plugins\""), "{e}");
        let e = refused(
            "a.conflist",
            r#"{"cniVersion":"0.3.1","name":"n","plugins":{"type":"x"}}"#,
        );
        assert!(e.problem.contains("not a list"), "{e}");
        let e = refused(
            "a.conflist",
            r#"{"cniVersion":"0.3.1","name":"n","plugins":[{"type":"calico"},{"mtu":1}]}"#,
        );
        assert!(e.problem.contains("plugins[1] has no \"type\""), "{e}");
        let e = refused(
            "a.conflist",
            r#"{"cniVersion":"0.2.0","name":"n","plugins":[{"type":"calico"}]}"#,
        );
        assert!(
            e.problem.contains("0.2.0") && e.fix.contains("0.3.0"),
            "{e}"
        );
        let e = refused(
            "a.conflist",
            r#"{"name":"n","plugins":[{"type":"calico"}]}"#,
        );
        assert!(e.problem.contains("cniVersion"), "{e}");
        let e = refused(
            "a.conflist",
            r#"{"cniVersion":"1.0.0","plugins":[{"type":"calico"}]}"#,
        );
        assert!(e.problem.contains("name"), "{e}");
        let e = refused(
            "a.conflist",
            r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"mesh-cni"}]}"#,
        );
        assert!(e.problem.contains("no network plugin"), "{e}");
        let e = refused("a.conf", CALICO);
        assert!(
            e.problem.contains("plugin list") && e.fix.contains(".conflist"),
            "{e}"
        );
        let e = refused("a.conf", r#"{"cniVersion":"1.0.0","name":"n"}"#);
        assert!(e.problem.contains("the plugin has no \"type\""), "{e}");
    }

    #[test]
    fn the_entry_reads_back_as_the_plugin_reads_it() {
        let line = entry().to_json();
        assert!(line.starts_with(r#"{"type": "mesh-cni""#), "{line}");
        assert_eq!(value(&line), entry().value());
        let odd = Entry {
            agent_socket: "/run/a \"b\".sock".into(),
            exclude_namespaces: vec![],
            timeout: "2500ms".into(),
        };
        assert_eq!(value(&odd.to_json())["agentSocket"], "/run/a \"b\".sock");
    }
}
