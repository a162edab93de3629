//! HostGAPlugin: `/health` and `/vmSettings`, protected exactly like WireServer (its mode, elevated callers
//! only; spec §2.6, §12.4). This module must never decide access itself: the pipeline already has.

use http::{Method, StatusCode};
use msp_core::Reason;

use super::Call;
use super::response::{self, Resp};

pub(super) fn serve(call: Call<'_>) -> Resp {
    let path = call.uri.path().to_ascii_lowercase();
    match (call.method, path.trim_end_matches('/')) {
        (&Method::GET, "/health") => response::text(StatusCode::OK, "OK"),
        (&Method::GET, "/vmsettings") => {
            let doc = serde_json::json!({
                "hostGAPluginVersion": "1.0.8.0",
                "vmSize": "Standard_D2s_v5",
                "vmId": call.vm.vm_id,
                "extensionGoalStatesSource": "FastTrack",
                "inVMGoalStateMetaData": {
                    "inSvdSeqNo": 1,
                    "activityId": call.vm.vm_id,
                    "correlationId": call.vm.vm_id,
                    "createdOnTicks": 0
                },
                "extensionGoalStates": []
            });
            response::json(doc.to_string())
        }
        _ => response::refuse(Reason::NotFound),
    }
}
