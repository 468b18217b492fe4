//! `socket ls|create|update|show|delete`.

use crate::cli::SocketCmd;
use crate::context::Context;
use crate::failure::Failure;
use crate::output;

pub async fn run(cmd: SocketCmd, ctx: &Context) -> Result<(), Failure> {
    let api = ctx.authed()?;
    match cmd {
        SocketCmd::Ls => ctx.output.print(api.sockets().await?.as_slice(), output::sockets),
        SocketCmd::Create(spec) => ctx.output.print(&api.create_socket(&spec.into()).await?, output::socket),
        SocketCmd::Update(change) => {
            let id = change.socket_id.clone();
            ctx.output.print(&api.update_socket(&id, &change.into()).await?, output::socket_and_tunnels)
        }
        SocketCmd::Show { socket_id } => ctx.output.print(&api.socket(&socket_id).await?, output::socket_and_tunnels),
        SocketCmd::Delete { socket_id } => {
            api.delete_socket(&socket_id).await?;
            let text = format!("Socket {socket_id} deleted");
            ctx.output.done("deleted", socket_id, text);
        }
    }
    Ok(())
}
