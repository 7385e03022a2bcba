//! The real libvirt on `MainLoop`, in a process of its own (libvirt takes one event
//! implementation per process): the scenarios of `libvirt_common`.

mod libvirt_common;

use std::sync::Arc;
use std::time::Duration;

use libvirt_common::LoopUnderTest;
use loopglue::handles::HandleTable;
use loopglue::MainLoop;

struct OnMainLoop(MainLoop);

impl LoopUnderTest for OnMainLoop {
    fn name(&self) -> &'static str {
        "MainLoop"
    }
    fn attach(&mut self, table: &HandleTable) {
        self.0.attach(Arc::new(table.clone())).unwrap();
    }
    fn turn(&mut self, max: Duration) -> usize {
        self.0.run_once(Some(max)).unwrap()
    }
}

#[test]
fn libvirt_on_main_loop() {
    libvirt_common::run_all(OnMainLoop(MainLoop::new().unwrap()));
}
