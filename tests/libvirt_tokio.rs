//! The real libvirt on tokio (`adapters::tokio`): the scenarios of `libvirt_common` on a
//! current-thread runtime (libvirt's callbacks on the test thread) and on a multi-thread one
//! (on its workers, while the test thread calls libvirt), each in a process of its own, since
//! libvirt takes one event implementation per process.

mod libvirt_common;
mod tokio_loop;

use std::sync::Arc;
use std::time::Duration;

use libvirt_common::{in_own_process, CountingTable, LoopUnderTest};
use loopglue::adapters::tokio::{attach_to, TokioAttachment};
use loopglue::handles::HandleTable;
use tokio_loop::{Flavor, TokioLoop};

struct OnTokio {
    // Dropped before the runtime.
    attachment: Option<TokioAttachment>,
    table: Option<CountingTable>,
    tokio: TokioLoop,
}

impl OnTokio {
    fn new(flavor: Flavor) -> OnTokio {
        OnTokio {
            attachment: None,
            table: None,
            tokio: TokioLoop::new(flavor),
        }
    }
}

impl LoopUnderTest for OnTokio {
    fn name(&self) -> &'static str {
        match self.tokio.flavor() {
            Flavor::CurrentThread => "tokio (current-thread)",
            Flavor::MultiThread => "tokio (multi-thread)",
        }
    }

    fn attach(&mut self, table: &HandleTable) {
        let counted = CountingTable::new(table);
        let attachment = attach_to(self.tokio.handle(), Arc::new(counted.clone())).unwrap();
        self.attachment = Some(attachment);
        self.table = Some(counted);
    }

    /// A round of the runtime, or at most 20 ms: a runtime that never finishes a round (a
    /// driver that spins) then fails the CPU bounds in seconds, not at the deadlines.
    fn turn(&mut self, max: Duration) -> usize {
        let table = self.table.as_ref().expect("attached");
        let before = table.dispatches();
        self.tokio.turn(max.min(Duration::from_millis(20)));
        table.dispatches() - before
    }

    fn cpu_time(&self) -> Duration {
        self.tokio.cpu_time()
    }
}

#[test]
fn libvirt_on_tokio_current_thread() {
    in_own_process("libvirt_on_tokio_current_thread", || {
        libvirt_common::run_all(OnTokio::new(Flavor::CurrentThread));
    });
}

#[test]
fn libvirt_on_tokio_multi_thread() {
    in_own_process("libvirt_on_tokio_multi_thread", || {
        libvirt_common::run_all(OnTokio::new(Flavor::MultiThread));
    });
}
