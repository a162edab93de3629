//! `msp-host`: plays WireServer, HostGAPlugin and IMDS for one or many VMs, latches one key per VM and, in
//! Enforce mode, rejects every request not signed with that VM's key (spec §12).
