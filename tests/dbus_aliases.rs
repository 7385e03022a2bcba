//! Every libdbus main-loop name has a `#[doc(alias)]` on its loopglue counterpart, so that
//! rustdoc's search finds it (PORTING.md is the map in prose).
//!
//! The names are checked into this file, because the libdbus headers are not on every
//! machine (the default test run needs no libdbus); where they are installed, the test also
//! reads them and fails if libdbus declares a watch, timeout, dispatch, wakeup or server name
//! that the list misses.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

/// The watch / timeout / dispatch / wakeup names of `dbus-connection.h`, everything of
/// `dbus-server.h`, and the free function type the setters take (`dbus-memory.h`).
const NAMES: &[&str] = &[
    // dbus-connection.h: objects
    "DBusWatch",
    "DBusTimeout",
    "DBusWatchFlags",
    "DBUS_WATCH_READABLE",
    "DBUS_WATCH_WRITABLE",
    "DBUS_WATCH_ERROR",
    "DBUS_WATCH_HANGUP",
    "dbus_watch_get_fd",
    "dbus_watch_get_unix_fd",
    "dbus_watch_get_socket",
    "dbus_watch_get_flags",
    "dbus_watch_get_data",
    "dbus_watch_set_data",
    "dbus_watch_handle",
    "dbus_watch_get_enabled",
    "dbus_timeout_get_interval",
    "dbus_timeout_get_data",
    "dbus_timeout_set_data",
    "dbus_timeout_handle",
    "dbus_timeout_get_enabled",
    // dbus-connection.h: glue
    "DBusAddWatchFunction",
    "DBusRemoveWatchFunction",
    "DBusWatchToggledFunction",
    "DBusAddTimeoutFunction",
    "DBusRemoveTimeoutFunction",
    "DBusTimeoutToggledFunction",
    "dbus_connection_set_watch_functions",
    "dbus_connection_set_timeout_functions",
    // dbus-connection.h: dispatch and wakeup
    "dbus_connection_dispatch",
    "dbus_connection_get_dispatch_status",
    "DBusDispatchStatus",
    "DBUS_DISPATCH_DATA_REMAINS",
    "DBUS_DISPATCH_COMPLETE",
    "DBUS_DISPATCH_NEED_MEMORY",
    "DBusDispatchStatusFunction",
    "dbus_connection_set_dispatch_status_function",
    "DBusWakeupMainFunction",
    "dbus_connection_set_wakeup_main_function",
    // dbus-server.h
    "DBusServer",
    "DBusNewConnectionFunction",
    "dbus_server_listen",
    "dbus_server_ref",
    "dbus_server_unref",
    "dbus_server_disconnect",
    "dbus_server_get_is_connected",
    "dbus_server_get_address",
    "dbus_server_get_id",
    "dbus_server_set_new_connection_function",
    "dbus_server_set_watch_functions",
    "dbus_server_set_timeout_functions",
    "dbus_server_set_auth_mechanisms",
    "dbus_server_allocate_data_slot",
    "dbus_server_free_data_slot",
    "dbus_server_set_data",
    "dbus_server_get_data",
    // dbus-memory.h
    "DBusFreeFunction",
];

fn aliases_in(dir: &Path, out: &mut BTreeSet<String>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            aliases_in(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = fs::read_to_string(&path).unwrap();
            for piece in text.split("doc(alias = \"").skip(1) {
                if let Some(end) = piece.find('"') {
                    out.insert(piece[..end].to_string());
                }
            }
        }
    }
}

/// Identifiers in `text` for which `keep` holds.
fn identifiers(text: &str, keep: impl Fn(&str) -> bool) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| keep(word))
        .map(str::to_string)
        .collect()
}

fn is_main_loop_name(word: &str) -> bool {
    word.starts_with("dbus_watch_")
        || word.starts_with("dbus_timeout_")
        || word.starts_with("DBUS_WATCH_")
        || (word.starts_with("DBUS_DISPATCH_") && word != "DBUS_DISPATCH_STATUS")
        || word.starts_with("DBusWatch")
        || word.starts_with("DBusTimeout")
        || word.starts_with("DBusDispatchStatus")
        || matches!(
            word,
            "DBusAddWatchFunction"
                | "DBusRemoveWatchFunction"
                | "DBusAddTimeoutFunction"
                | "DBusRemoveTimeoutFunction"
                | "DBusWakeupMainFunction"
                | "dbus_connection_dispatch"
                | "dbus_connection_get_dispatch_status"
                | "dbus_connection_set_watch_functions"
                | "dbus_connection_set_timeout_functions"
                | "dbus_connection_set_wakeup_main_function"
                | "dbus_connection_set_dispatch_status_function"
        )
}

#[test]
fn every_libdbus_main_loop_name_has_a_doc_alias() {
    let mut aliases = BTreeSet::new();
    aliases_in(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut aliases,
    );
    let missing: Vec<_> = NAMES.iter().filter(|n| !aliases.contains(**n)).collect();
    assert!(missing.is_empty(), "no #[doc(alias)] for {missing:?}");
}

#[test]
fn the_list_covers_the_installed_headers() {
    let headers = Path::new("/usr/include/dbus-1.0/dbus");
    let (Ok(connection), Ok(server)) = (
        fs::read_to_string(headers.join("dbus-connection.h")),
        fs::read_to_string(headers.join("dbus-server.h")),
    ) else {
        eprintln!("libdbus headers not installed: the checked-in list stands alone");
        return;
    };
    let listed: BTreeSet<String> = NAMES.iter().map(|n| n.to_string()).collect();
    let mut declared = identifiers(&connection, is_main_loop_name);
    declared.extend(identifiers(&server, |w| {
        w.starts_with("dbus_server_") || w == "DBusServer" || w == "DBusNewConnectionFunction"
    }));
    // Doc-comment words and include guards that merely look like names.
    declared.retain(|w| !w.ends_with("_H") && !w.ends_with('_'));
    let unlisted: Vec<_> = declared.difference(&listed).collect();
    assert!(
        unlisted.is_empty(),
        "declared by libdbus, missing from NAMES: {unlisted:?}"
    );
}
