//! The real libvirt on GLib (`adapters::glib`, the `virEventRegisterGLib` equivalent): the
//! scenarios of `libvirt_common` on a `MainContext` of the test's own, iterated by the test
//! thread, in a process of its own (libvirt takes one event implementation per process).

mod libvirt_common;

use std::sync::Arc;
use std::time::Duration;

use glib::{ControlFlow, MainContext, Priority};
use libvirt_common::{CountingTable, LoopUnderTest};
use loopglue::adapters::glib::{GlibAttachment, GlibGlue};
use loopglue::handles::HandleTable;

struct OnGlib {
    attachment: Option<GlibAttachment>,
    table: Option<CountingTable>,
    glue: GlibGlue,
    context: MainContext,
}

impl LoopUnderTest for OnGlib {
    fn name(&self) -> &'static str {
        "GLib"
    }

    fn attach(&mut self, table: &HandleTable) {
        let counted = CountingTable::new(table);
        self.attachment = Some(self.glue.attach(Arc::new(counted.clone())).unwrap());
        self.table = Some(counted);
    }

    /// One `g_main_context_iteration`; a timeout source of the test's own, below the glue's
    /// priority, bounds its wait.
    fn turn(&mut self, max: Duration) -> usize {
        let table = self.table.as_ref().expect("attached");
        let before = table.dispatches();
        if max.is_zero() {
            self.context.iteration(false);
        } else {
            let bound = glib::timeout_source_new(max, None, Priority::LOW, || ControlFlow::Break);
            bound.attach(Some(&self.context));
            self.context.iteration(true);
            bound.destroy();
        }
        table.dispatches() - before
    }
}

#[test]
fn libvirt_on_glib() {
    let context = MainContext::new();
    let glue = GlibGlue::new(&context);
    libvirt_common::run_all(OnGlib {
        attachment: None,
        table: None,
        glue,
        context,
    });
}
