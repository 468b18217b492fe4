//! `cluster status|add|remove`: membership, for operators (status for anyone, in less detail).

use crate::cli::ClusterCmd;
use crate::context::Context;
use crate::failure::Failure;
use crate::output;

pub async fn run(cmd: ClusterCmd, ctx: &Context) -> Result<(), Failure> {
    match cmd {
        ClusterCmd::Status => ctx.output.print(&ctx.maybe_operator().cluster().await?, output::cluster),
        ClusterCmd::Add { id, raft_addr } => {
            ctx.output.print(&ctx.operator()?.add_node(id, &raft_addr).await?, output::cluster)
        }
        ClusterCmd::Remove { id } => {
            ctx.operator()?.remove_node(id).await?;
            ctx.output.done("removed", id, format!("Node {id} removed"));
        }
    }
    Ok(())
}
